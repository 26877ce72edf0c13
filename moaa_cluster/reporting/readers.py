"""Readers of each kind of run directory: tokens, timings, rates and lines for the report."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from moaa_cluster.evaluation.protocol_summary import format_protocol
from moaa_cluster.evaluation.summary import format_summary
from moaa_cluster.reporting.part import RunPart
from moaa_cluster.runs.files import read_json


def _add_tokens(tokens: dict, model: str, calls: int, prompt: int, completion: int) -> None:
    t = tokens.setdefault(model, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    t["calls"] += int(calls or 0)
    t["prompt_tokens"] += int(prompt or 0)
    t["completion_tokens"] += int(completion or 0)


def _read_parquet(path: Path, columns: list[str] | None = None) -> list[dict] | None:
    """The rows of a parquet file or dataset directory (``columns`` it has), None if absent."""
    import pyarrow.dataset as pads

    if not path.exists():
        return None
    ds = pads.dataset(path, format="parquet")
    cols = [c for c in columns if c in ds.schema.names] if columns else None
    return ds.to_table(columns=cols).to_pylist()


def _synth_output(run: Path, name: str) -> Path:
    """``<name>.parquet``, or the ``<name>/`` dataset directory a run at scale writes instead
    (``synth.single_file=false``)."""
    single = run / f"{name}.parquet"
    return single if single.exists() or not (run / name).is_dir() else run / name


def _load_synth(part: RunPart) -> None:
    counts = (part.manifest or {}).get("counts") or {}
    for model, t in (counts.get("tokens_per_model") or {}).items():
        _add_tokens(part.tokens, model, t["calls"], t["prompt_tokens"], t["completion_tokens"])
    rows = _read_parquet(_synth_output(part.path, "sft"), ["id", "calls"])
    if rows is None:
        part.missing.append(f"no sft.parquet in {part.path}")
        return
    # rows whose final answer was cut off, kept out of sft.parquet (truncated=exclude)
    cut = _read_parquet(_synth_output(part.path, "sft_truncated"), ["id", "calls"]) or []
    rows = rows + cut
    if not part.tokens:
        for r in rows:
            for c in r["calls"] or []:
                _add_tokens(part.tokens, c["model"], 1, c["prompt_tokens"], c["completion_tokens"])
    latency: dict[str, list[float]] = {}
    finish: dict[str, dict[str, int]] = {}
    for r in rows:
        for c in r["calls"] or []:
            latency.setdefault(c["model"], []).append(float(c["seconds"] or 0.0))
            f = finish.setdefault(c["model"], {})
            f[str(c["finish_reason"])] = f.get(str(c["finish_reason"]), 0) + 1
    part.lines.append(
        f"{len(rows)} conversations; {counts.get('multi_turn_rows', '?')} multi-turn, "
        f"{counts.get('rows_failed', '?')} failed, {counts.get('rejects_input', '?')} rejected "
        "on input."
    )
    if counts.get("rows_truncated"):
        fate = (
            f"{len(cut)} left out of sft.parquet (in sft_truncated.parquet)"
            if cut
            else "kept in sft.parquet, flagged `truncated`"
        )
        part.lines.append(
            f"{counts['rows_truncated']} end in a final answer cut off at max_tokens: {fate}."
        )
    if latency:
        part.lines += [
            "",
            "| model | calls | median s/call | finish reasons |",
            "|---|---|---|---|",
        ]
        for model, secs in latency.items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(finish[model].items()))
            part.lines.append(
                f"| {model} | {len(secs)} | {statistics.median(secs):.2f} | {reasons} |"
            )


def _consistency(outcomes: list[str]) -> float | None:
    decided = sum(o not in ("tie", "unresolved") for o in outcomes)
    both = sum(o != "unresolved" for o in outcomes)
    return decided / both if both else None


def _load_prefs(part: RunPart) -> None:
    """A ``sample`` or ``prefs`` run: candidates and their tokens, judge tokens, pair counts."""
    m = part.manifest or {}
    counts = m.get("counts") or {}
    sampler = ((m.get("config") or {}).get("sampler") or {}).get("name") or "sampler"
    fname = "candidates.parquet" if part.kind == "sample" else "prefs.parquet"
    rows = _read_parquet(
        part.path / fname,
        ["candidate_tokens", "scores", "chosen_index", "rejected_index", "judge"]
        + [f"judge_{k}" for k in ("calls", "prompt_tokens", "completion_tokens", "comparisons")],
    )
    if rows is None:
        part.missing.append(f"no {fname} in {part.path}")
        return
    generated = sum(sum(r.get("candidate_tokens") or []) for r in rows)
    n_cands = sum(len(r.get("candidate_tokens") or []) for r in rows)
    if n_cands:
        # prompt tokens of the samples are not recorded per candidate
        _add_tokens(part.tokens, sampler, n_cands, 0, generated)
        part.lines.append(
            f"{sampler}: {n_cands} candidates, {generated} generated tokens (the candidates' "
            "prompt tokens are not recorded: 0 in the cost table)."
        )
    j = counts.get("judge") or {}
    judge_name = f"judge:{(m.get('judge') or {}).get('name', 'judge')}"
    if j:
        _add_tokens(
            part.tokens,
            judge_name,
            j.get("calls"),
            j.get("prompt_tokens"),
            j.get("completion_tokens"),
        )
    part.lines.append(
        f"{counts.get('pairs', len(rows))} preference pairs from "
        f"{counts.get('candidate_sets', '?')} candidate sets; skipped "
        f"{counts.get('skipped_identical', '?')} identical, "
        f"{counts.get('skipped_no_preference', '?')} without preference; "
        f"{counts.get('rows_failed', '?')} failed."
        if part.kind == "prefs"
        else f"{counts.get('candidate_sets', len(rows))} candidate sets ({n_cands} candidates)."
    )
    if part.kind == "prefs":
        _prefs_judge_and_scores(part, rows, j, judge_name)


def _prefs_judge_and_scores(part: RunPart, rows: list[dict], j: dict, judge_name: str) -> None:
    """A prefs run's judge rates (``j``: its manifest's judge counts) and pair scores."""
    outcomes = []
    for r in rows:
        if r.get("judge"):
            outcomes += [p["outcome"] for p in json.loads(r["judge"]).get("pairs", [])]
    if j.get("comparisons"):
        part.judge_rates.append(
            {
                "label": f"{part.name}: {judge_name}",
                "parse_fail_before": j.get("verdict_unparsed", 0) / j["comparisons"],
                "parse_fail_after": j.get("verdict_unresolved", 0) / j["comparisons"],
                "position_consistency": _consistency(outcomes),
            }
        )
    chosen = [r["scores"][r["chosen_index"]] for r in rows if r.get("scores")]
    rejected = [r["scores"][r["rejected_index"]] for r in rows if r.get("scores")]
    if chosen:
        part.scores = (chosen, rejected)
        part.lines.append(
            f"Mean judge score: chosen {statistics.mean(chosen):.2f}, rejected "
            f"{statistics.mean(rejected):.2f} (a win counts 1, a tie 0.5 per comparison)."
        )


def _load_judge_eval(part: RunPart) -> None:
    data = read_json(part.path / "judge_eval.json")
    if data is None:
        part.missing.append(f"no judge_eval.json in {part.path} (the run has not finished)")
        return
    part.timings = {**data.get("timings_s", {}), **part.timings}
    part.lines += [
        "| judge | pairs | accuracy | ties | position consistency |",
        "|---|---|---|---|---|",
    ]
    for row in data.get("table", []):
        _add_tokens(
            part.tokens,
            f"judge:{row['judge']}",
            row["calls"],
            row["prompt_tokens"],
            row["completion_tokens"],
        )
        part.judge_rates.append(
            {
                "label": row["judge"],
                "parse_fail_before": row["parse_fail_before"],
                "parse_fail_after": row["parse_fail_after"],
                "position_consistency": row["position_consistency"],
            }
        )
        part.win_rates.append(
            {
                "label": f"accuracy: {row['judge']}",
                "rate": row["accuracy"],
                "low": None,
                "high": None,
            }
        )
        part.lines.append(
            f"| {row['judge']} | {row['pairs']} | {row['accuracy']:.3f} | {row['ties']:.3f} | "
            f"{row['position_consistency']:.3f} |"
        )


def _load_eval(part: RunPart) -> None:
    s = read_json(part.path / "summary.json")
    if s is None:
        part.missing.append(f"no summary.json in {part.path} (the run has not finished)")
        return
    part.timings = {**s.get("timings_s", {}), **part.timings}
    for model, t in (s.get("tokens_per_model") or {}).items():
        _add_tokens(part.tokens, model, t["calls"], t["prompt_tokens"], t["completion_tokens"])
    if "protocol" in s:
        _load_protocol(part, s)
        return
    w = s["win_rate"]

    def add(label: str, r: dict) -> None:
        if r.get("win_rate") is not None:
            part.win_rates.append(
                {
                    "label": label,
                    "rate": r["win_rate"],
                    "low": r.get("ci_low"),
                    "high": r.get("ci_high"),
                    "lc": r.get("lc_win_rate"),
                }
            )

    add(f"{s['model']} vs {s['baseline']}", w)
    for src, r in (s.get("by_source") or {}).items():
        add(f"  {src}", r)
    j = s.get("judge") or {}
    if j.get("comparisons"):
        part.judge_rates.append(
            {
                "label": f"{part.name}: judge:{s.get('judge_name')}",
                "parse_fail_before": j.get("verdict_parse_failure_rate"),
                "parse_fail_after": j.get("verdict_unresolved_rate"),
                "position_consistency": j.get("position_consistency"),
            }
        )
    table = format_summary(s).splitlines()
    part.lines += [
        f"{s['evaluated']} of {s['questions']} questions answered and judged "
        f"({s['rejected']} rejected, {s['failed']} failed). Judged on: {s.get('judged_on', '?')}.",
        "",
        f"**{table[0]}**",
        "",
        *table[1:-1],
        "",
        table[-1],
    ]


def _load_protocol(part: RunPart, s: dict) -> None:
    """A benchmark protocol's run: its headline score (and a rate for the win-rate plot)."""
    h = s["protocol"]["headline"]
    if h["value"] is not None and h["unit"] == "%":
        low, high = h["low"], h["high"]
        part.win_rates.append(
            {
                "label": f"{s['model']}: {h['protocol']}"
                + (f" vs {s['baseline']}" if s.get("baseline") else ""),
                "metric": h["metric"],
                "rate": h["value"] / 100,
                "low": None if low is None else low / 100,
                "high": None if high is None else high / 100,
            }
        )
    part.lines += [
        f"{s['evaluated']} of {s['questions']} questions answered and judged "
        f"({s['rejected']} rejected, {s['failed']} failed).",
        "",
        *format_protocol(s).splitlines(),
    ]


def _load_train(part: RunPart) -> None:
    m = part.manifest or {}
    metrics = part.path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "loss" in rec:
                part.losses.append((float(rec.get("step", len(part.losses))), float(rec["loss"])))
    else:
        part.missing.append(f"no metrics.jsonl in {part.path}")
    counts = m.get("counts") or {}
    losses = m.get("losses") or {}
    if m:
        part.lines.append(
            f"{m.get('task', 'train')}: {counts.get('steps', '?')} steps on "
            f"{counts.get('rows', '?')} rows; loss {losses.get('first')} -> {losses.get('last')}."
        )


LOADERS = {
    "synth": _load_synth,
    "sample": _load_prefs,
    "prefs": _load_prefs,
    "judge-eval": _load_judge_eval,
    "eval": _load_eval,
    "train": _load_train,
}
