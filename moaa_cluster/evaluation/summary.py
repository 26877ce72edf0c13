"""An evaluation's statistics: outcomes, win rates, the judge's behaviour, tokens, the table.

Pure functions over the finished rows of ``moaa eval`` (``pipeline/evaluate.py``), each as
its :func:`compact_row` (no answer texts: the rows come back to the driver in that form); what
they return is ``summary.json``, which ``moaa report`` reads and prints with
:func:`format_summary`.
"""

from __future__ import annotations

import json

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.evaluation.bradley_terry import answer_style
from moaa_cluster.evaluation.settings import EvalSettings
from moaa_cluster.evaluation.winrate import win_rate
from moaa_cluster.judge.judge import summarize
from moaa_cluster.judge.ranking import TIE, UNRESOLVED

JUDGED_ON = (
    "single-turn: the question and both answers; multi-turn: the full conversation (all user "
    "turns, each side's answers to every turn, each written with its own earlier answers)"
)


def outcome_of(result_outcome: object) -> str:
    """The model's outcome from ``judge_pair``'s (model = 0, baseline = 1) pair result."""
    if result_outcome == 0:
        return "win"
    if result_outcome == 1:
        return "loss"
    if result_outcome == TIE:
        return "tie"
    if result_outcome == UNRESOLVED:
        return "unresolved"
    raise ValueError(f"unexpected pair outcome {result_outcome!r}")


def answer_chars(answers: list[str] | None) -> int:
    """Characters of all of one side's answer turns (the length the length control uses)."""
    return sum(len(a) for a in answers or [])


TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "finish_reasons")  # per side, per turn
# the fields of a finished row the summaries read as they are (all small)
SMALL_FIELDS = (
    "id",
    "source",
    "source_id",
    "outcome",
    "identical",
    "category",
    "preference",
    "game_outcomes",
    "grades",
    "baseline_generated",
    "retries",
    *(f"{side}_{f}" for side in ("model", "baseline") for f in TOKEN_FIELDS),
    "judge_calls",
    "judge_prompt_tokens",
    "judge_completion_tokens",
)


def compact_row(row: dict) -> dict:
    """What the summaries read of a finished row (``eval_worker.SHARD_SCHEMA``): its small
    fields, each side's answer length instead of its texts (and the last answers' style when
    the row has arena games), the judge's comparisons as their counts and winners."""
    judge = json.loads(row.get("judge") or "{}")
    comparisons = judge.get("comparisons") or []
    winners = [c["winner"] for c in comparisons]
    out = {k: row.get(k) for k in SMALL_FIELDS}
    out.update(
        model_chars=answer_chars(row.get("model_answers")),
        baseline_chars=answer_chars(row.get("baseline_answers")),
        comparison_counts=summarize(comparisons),
        first_wins=sum(w == "A" for w in winners),
        resolved=sum(w is not None for w in winners),
        read_from=judge.get("read_from"),
    )
    if row.get("game_outcomes"):  # arena_hard's style control reads the last answers
        out["model_style"] = list(answer_style(row["model_answers"][-1]))
        out["baseline_style"] = list(answer_style(row["baseline_answers"][-1]))
    return out


def summarize_judgments(rows: list[dict], settings: EvalSettings) -> dict:
    """Win rates overall and per source, and the judge's behaviour, from finished rows
    (:func:`compact_row`)."""
    judged = [r for r in rows if r["outcome"] in ("win", "tie", "loss")]

    def rate(group: list[dict], lc: bool) -> dict:
        return win_rate(
            [r["outcome"] for r in group],
            model_lengths=[r["model_chars"] for r in group] if lc else None,
            baseline_lengths=[r["baseline_chars"] for r in group] if lc else None,
            resamples=settings.resamples,
            confidence=settings.confidence,
            seed=settings.seed or 0,
            l2=settings.lc_l2,
        ).as_dict()

    sources = sorted({r["source"] for r in rows})
    return {
        "win_rate": rate(judged, settings.length_control),
        "by_source": {s: rate([r for r in judged if r["source"] == s], False) for s in sources},
        "unresolved": sum(r["outcome"] == "unresolved" for r in rows),
        "identical": sum(bool(r.get("identical")) for r in rows),
        "judge": judge_statistics(rows),
        "lengths": {
            "model_chars_mean": sum(r["model_chars"] for r in rows) / max(1, len(rows)),
            "baseline_chars_mean": sum(r["baseline_chars"] for r in rows) / max(1, len(rows)),
        },
    }


def judge_statistics(rows: list[dict]) -> dict:
    """The judge's counters over every comparison of ``rows`` (:func:`compact_row`), with its
    consistency rates."""
    counts = summarize([])
    for r in rows:
        for k, v in r["comparison_counts"].items():
            counts[k] += v
    resolved = sum(r["resolved"] for r in rows)
    compared = [r for r in rows if not r.get("identical")]
    decided = sum(r["outcome"] in ("win", "loss") for r in compared)
    both = sum(r["outcome"] in ("win", "loss", "tie") for r in compared)
    return {
        **counts,
        # both orders resolved and agreeing, among pairs where both orders resolved
        "position_consistency": decided / both if both else None,
        # how often the answer shown first won, among resolved verdicts
        "first_position_wins": sum(r["first_wins"] for r in rows) / resolved if resolved else None,
        "verdict_parse_failure_rate": counts["verdict_unparsed"] / max(1, counts["comparisons"]),
        "verdict_unresolved_rate": counts["verdict_unresolved"] / max(1, counts["comparisons"]),
    }


def tally_tokens(
    rows: list[dict], model: ModelSpec, baseline_model: ModelSpec | None, judge_name: str
) -> dict:
    """Calls and tokens per model: the evaluated model, a generated baseline, the judge."""
    out: dict[str, dict] = {}

    def add(name: str, calls: int, prompt: int, completion: int) -> None:
        t = out.setdefault(name, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
        t["calls"] += calls
        t["prompt_tokens"] += prompt
        t["completion_tokens"] += completion

    for r in rows:
        add(
            model.name,
            len(r["model_completion_tokens"] or []),
            sum(r["model_prompt_tokens"] or []),
            sum(r["model_completion_tokens"] or []),
        )
        if baseline_model is not None and r["baseline_generated"]:
            add(
                baseline_model.name,
                len(r["baseline_completion_tokens"] or []),
                sum(r["baseline_prompt_tokens"] or []),
                sum(r["baseline_completion_tokens"] or []),
            )
        add(
            f"judge:{judge_name}",
            r["judge_calls"] or 0,
            r["judge_prompt_tokens"] or 0,
            r["judge_completion_tokens"] or 0,
        )
    return out


def truncated_answers(rows: list[dict]) -> dict[str, int]:
    """Per side, the questions where some answer turn stopped at ``max_tokens``.

    They are judged as they are (a cut-off answer is what the model gave); the count says how
    much of the comparison is about answers that did not finish.
    """
    return {
        side: sum(1 for r in rows if "length" in (r.get(f"{side}_finish_reasons") or []))
        for side in ("model", "baseline")
    }


def format_summary(summary: dict) -> str:
    """The printed table: one line overall, one per source."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def interval(lo: float | None, hi: float | None) -> str:
        return "" if lo is None or hi is None else f" [{pct(lo)}, {pct(hi)}]"

    w = summary["win_rate"]
    level = f"{round(100 * w['confidence'])}% CI"
    lines = [
        f"{summary['model']} vs {summary['baseline']} (judge: {summary['judge_name']}; "
        f"win rates in %, {level}, ties count half)",
        "| questions | n | win | tie | loss | win rate | LC win rate |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(label: str, r: dict, lc: bool) -> str:
        lc_text = pct(r["lc_win_rate"]) + interval(r["lc_ci_low"], r["lc_ci_high"]) if lc else ""
        return (
            f"| {label} | {r['n']} | {r['wins']} | {r['ties']} | {r['losses']} | "
            f"{pct(r['win_rate'])}{interval(r['ci_low'], r['ci_high'])} | {lc_text} |"
        )

    lines.append(line("all", w, True))
    for src, r in summary["by_source"].items():
        lines.append(line(src, r, False))
    j = summary["judge"]
    consistency = j["position_consistency"]
    lines.append(
        f"judge: {j['comparisons']} comparisons, {j['calls']} calls; position consistency "
        f"{pct(consistency)}%, verdicts unparsed {j['verdict_unparsed']} (recovered "
        f"{j['verdict_recovered']}, unresolved {j['verdict_unresolved']}); "
        f"{summary['unresolved']} question(s) unresolved, not counted; "
        f"{summary.get('identical', 0)} identical answer pair(s) counted as ties"
    )
    lines += truncation_lines(summary)
    return "\n".join(lines)


def truncation_lines(summary: dict) -> list[str]:
    """The line saying how many answers stopped at max_tokens (none when no answer did)."""
    cut = summary.get("answers_truncated") or {}
    if not any(cut.values()):
        return []
    return [
        f"truncated: {cut.get('model', 0)} model and {cut.get('baseline', 0)} baseline "
        "answers stopped at max_tokens (finish_reason: length), judged as they are"
    ]
