"""A benchmark protocol's score from an evaluation's finished rows (``summary.compact_row``).

Each protocol reports one *headline* (the number its paper's table shows, with its interval)
and its details; what the judge's output did not let us read is counted, never scored:

* ``alpaca_eval2``: the length-controlled win rate (LC GLM, ``minimal`` variant for one
  model), plain win rate beside it; lengths in characters, as AlpacaEval measures them.
* ``arena_hard``: the Bradley-Terry win rate against the baseline with its bootstrap interval
  (optionally style-controlled); a question with an unparsed game is left out, as the
  benchmark does.
* ``mt_bench``: the mean 1-10 grade over every parsed turn, per turn and per category.
"""

from __future__ import annotations

from moaa_cluster.evaluation.bradley_terry import Battle, arena_hard_scores
from moaa_cluster.evaluation.lc_winrate import lc_win_rate
from moaa_cluster.evaluation.mt_bench_scores import TurnScore, mt_bench_scores
from moaa_cluster.evaluation.settings import EvalSettings
from moaa_cluster.evaluation.summary import truncation_lines

HEADLINES = {
    "pairwise": ("win rate", "%"),
    "alpaca_eval2": ("LC win rate", "%"),
    "arena_hard": ("win rate (BT)", "%"),
    "mt_bench": ("score", "1-10"),
}


def headline(protocol: str, value: float | None, low: float | None, high: float | None) -> dict:
    metric, unit = HEADLINES[protocol]
    return {
        "protocol": protocol,
        "metric": metric,
        "unit": unit,
        "value": value,
        "low": low,
        "high": high,
    }


def _alpaca(rows: list[dict], s: EvalSettings) -> dict:
    read = [r for r in rows if r.get("preference") is not None]
    recovered = sum(str(r.get("read_from") or "").startswith("recovered") for r in read)
    out: dict = {"judged": len(read), "unparsed": len(rows) - len(read), "recovered": recovered}
    if not read:
        return {**out, "headline": headline("alpaca_eval2", None, None, None)}
    res = lc_win_rate(
        [r["preference"] for r in read],
        [r["model_chars"] for r in read],
        [r["baseline_chars"] for r in read],
        resamples=s.resamples,
        confidence=s.confidence,
        seed=s.seed or 0,
    )
    return {
        **out,
        "headline": headline("alpaca_eval2", res.lc_win_rate, res.lc_ci_low, res.lc_ci_high),
        "win_rate": res.win_rate,
        "win_rate_ci": [res.ci_low, res.ci_high],
        "lc": res.as_dict(),
    }


def _arena(rows: list[dict], s: EvalSettings, model: str, baseline: str) -> dict:
    full = [r for r in rows if r.get("game_outcomes") and None not in r["game_outcomes"]]
    games = sum(len(r.get("game_outcomes") or []) for r in rows)
    unparsed = sum(o is None for r in rows for o in r.get("game_outcomes") or [])
    out: dict = {"questions": len(full), "games": games, "games_unparsed": unparsed}
    if not full:
        return {**out, "headline": headline("arena_hard", None, None, None)}
    style = s.protocol.style_control
    battles = [
        Battle(
            model,
            tuple(r["game_outcomes"]),
            tuple(r["model_style"]) if style else None,
            tuple(r["baseline_style"]) if style else None,
        )
        for r in full
    ]
    res = arena_hard_scores(
        battles,
        baseline=baseline,
        style_control=style,
        resamples=min(s.resamples, 100) if s.resamples else 0,  # the benchmark's 100 rounds
        confidence=s.confidence,
        seed=s.seed or 0,
    )
    score = res.scores[model]
    return {
        **out,
        "headline": headline("arena_hard", score.win_rate, score.ci_low, score.ci_high),
        "bradley_terry": res.as_dict(),
    }


def _mt_bench(rows: list[dict], s: EvalSettings) -> dict:
    grades = [
        TurnScore(r.get("source_id") or r["id"], r.get("category") or "general", t, g)
        for r in rows
        for t, g in enumerate(r.get("grades") or [], start=1)
    ]
    if not grades:
        return {"headline": headline("mt_bench", None, None, None), "scored": 0, "unparsed": 0}
    res = mt_bench_scores(grades, resamples=s.resamples, confidence=s.confidence, seed=s.seed or 0)
    return {
        "headline": headline("mt_bench", res.overall, res.ci_low, res.ci_high),
        **res.as_dict(),
    }


def protocol_summary(rows: list[dict], settings: EvalSettings, model: str, baseline: str) -> dict:
    """The ``protocol`` section of ``summary.json`` for a benchmark protocol's rows."""
    name = settings.protocol.name
    if name == "alpaca_eval2":
        return _alpaca(rows, settings)
    if name == "arena_hard":
        return _arena(rows, settings, model, baseline)
    if name == "mt_bench":
        return _mt_bench(rows, settings)
    raise ValueError(f"{name!r} is not a benchmark protocol")


def format_protocol(summary: dict) -> str:
    """The printed lines of a benchmark protocol's result."""
    p = summary["protocol"]
    h = p["headline"]
    unit = "" if h["unit"] == "1-10" else "%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}" if unit == "" else f"{v:.1f}"

    ci = "" if h["low"] is None else f" [{num(h['low'])}, {num(h['high'])}]"
    lines = [
        f"{summary['model']} ({h['protocol']}, judge: {summary['judge_name']}"
        + (f", vs {summary['baseline']}" if h["protocol"] != "mt_bench" else "")
        + f"): {h['metric']} {num(h['value'])}{unit}{ci}"
    ]
    if h["protocol"] == "alpaca_eval2":
        lines.append(
            f"win rate {num(p.get('win_rate'))}%; {p['judged']} judged, {p['unparsed']} "
            "unreadable (neither m nor M in the top logprobs or the text), not scored"
            + (
                f"; {p['recovered']} of the judged read only when asked again constrained to "
                "m/M (the judge's first answer named neither)"
                if p.get("recovered")
                else ""
            )
        )
    elif h["protocol"] == "arena_hard":
        lines.append(
            f"{p['questions']} questions with both games parsed; {p['games_unparsed']} of "
            f"{p['games']} games without a readable verdict, their questions left out"
        )
    else:
        lines.append(
            f"turn 1 {num(p.get('turn_1'))}, turn 2 {num(p.get('turn_2'))}; {p['scored']} "
            f"grades read, {p['unparsed']} unreadable, not scored; by category: "
            + ", ".join(f"{c} {num(v)}" for c, v in sorted((p.get("per_category") or {}).items()))
        )
    lines += truncation_lines(summary)
    return "\n".join(lines)
