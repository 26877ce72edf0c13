"""What a prefs (or sample) run writes: its shard rows, ``prefs.parquet`` (TRL's preference
format) or ``candidates.parquet``, ``rejects.jsonl``, the counts and the summary it prints.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from moaa_cluster.judge.judge import COUNT_FIELDS
from moaa_cluster.pipeline.frame import MESSAGE, shard_schema
from moaa_cluster.runs.files import write_parquet_atomic
from moaa_cluster.runs.shards import consolidate
from moaa_cluster.runs.storage import join
from moaa_cluster.runs.task_run import write_rejects

SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.list_(MESSAGE)),
        ("rejected", pa.list_(MESSAGE)),
        ("candidates", pa.list_(pa.string())),
        ("candidate_tokens", pa.list_(pa.int64())),
        ("candidate_finish_reasons", pa.list_(pa.string())),
        ("candidate_truncated", pa.list_(pa.bool_())),  # finish_reason "length": cut off
        ("scores", pa.list_(pa.float64())),
        ("chosen_index", pa.int32()),
        ("rejected_index", pa.int32()),
        # ok | identical | all_truncated | no_preference | truncated_preferred | sampled
        ("status", pa.string()),
        ("judge", pa.string()),  # JSON: every comparison (criteria, critiques, verdicts)
        *[(f"judge_{f}", pa.int64()) for f in COUNT_FIELDS],
    ]
)
PAIR_COLUMNS = [
    "id",
    "source",
    "source_id",
    "prompt",
    "chosen",
    "rejected",
    "candidates",
    "candidate_tokens",
    "candidate_finish_reasons",
    "candidate_truncated",
    "scores",
    "chosen_index",
    "rejected_index",
    "judge",
    *[f"judge_{f}" for f in COUNT_FIELDS],
]
CANDIDATE_COLUMNS = [
    "id",
    "source",
    "source_id",
    "prompt",
    "candidates",
    "candidate_tokens",
    "candidate_finish_reasons",
    "candidate_truncated",
]
SKIP_REASONS = {
    "identical": "all candidates identical: no preference to learn",
    "no_preference": "judge scores show no strict preference among the candidates",
    "all_truncated": "every candidate stopped at max_tokens (finish_reason: length), and "
    "prefs.truncated=exclude_from_chosen lets none be chosen; not judged",
    "truncated_preferred": "only candidates that stopped at max_tokens (finish_reason: length) "
    "score above the worst, and prefs.truncated=exclude_from_chosen lets none of them be chosen",
}
JUDGED = ("ok", "no_preference", "truncated_preferred")


def write_outputs(
    run_dir: Path | str, input_rejects: list[dict], sample_only: bool = False
) -> dict:
    """Consolidates shards into ``prefs.parquet`` (TRL preference format) and rejects.

    With ``sample_only`` (``moaa sample``) it writes ``candidates.parquet`` instead.

    Returns:
        The run's counts (see ``run_counts``).
    """
    done, failed = consolidate(run_dir)
    if sample_only:
        sampled = sorted((r for r in done if r["status"] == "sampled"), key=lambda r: r["id"])
        write_parquet_atomic(
            _table(sampled, CANDIDATE_COLUMNS), join(run_dir, "candidates.parquet")
        )
    pairs = sorted((r for r in done if r["status"] == "ok"), key=lambda r: (r["source"], r["id"]))
    write_parquet_atomic(_table(pairs, PAIR_COLUMNS), join(run_dir, "prefs.parquet"))
    write_rejects(run_dir, input_rejects, _skips(done) + _failures(failed))
    return run_counts(done, failed, input_rejects)


def _table(rows: list[dict], columns: list[str]) -> pa.Table:
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)


def _skips(done: list[dict]) -> list[dict]:
    """The rejects of rows that produced no pair, with the reason (``SKIP_REASONS``)."""
    return [
        {
            "source": r["source"],
            "where": r["id"],
            "stage": "prefs",
            "reason": SKIP_REASONS[r["status"]],
            "record": {
                "status": r["status"],
                "candidates": r["candidates"],
                "candidate_truncated": r.get("candidate_truncated"),
                "scores": r["scores"],
            },
        }
        for r in done
        if r["status"] in SKIP_REASONS
    ]


def _failures(failed: list[dict]) -> list[dict]:
    return [
        {
            "source": r["source"],
            "where": r["id"],
            "stage": "inference",
            "reason": r["error"],
            "record": {"prompt": r["prompt"]},
        }
        for r in failed
    ]


def run_counts(done: list[dict], failed: list[dict], input_rejects: list[dict]) -> dict:
    """The manifest's counts: pairs, skips by reason, truncation, judge totals and rates."""
    judged = [r for r in done if r["status"] in JUDGED]
    totals = {f: sum(r[f"judge_{f}"] or 0 for r in judged) for f in COUNT_FIELDS}
    pairs = [r for r in done if r["status"] == "ok"]

    def truncated_at(r: dict, index: str) -> bool:
        flags, k = r.get("candidate_truncated") or [], r[index]
        return k is not None and k < len(flags) and bool(flags[k])

    return {
        "candidate_sets": sum(r["status"] != "identical" for r in done),
        "pairs": len(pairs),
        "skipped_identical": sum(r["status"] == "identical" for r in done),
        "skipped_no_preference": sum(r["status"] == "no_preference" for r in done),
        "skipped_all_truncated": sum(r["status"] == "all_truncated" for r in done),
        "skipped_truncated_preferred": sum(r["status"] == "truncated_preferred" for r in done),
        "candidates": sum(len(r.get("candidates") or []) for r in done),
        "candidates_truncated": sum(sum(r.get("candidate_truncated") or []) for r in done),
        "pairs_chosen_truncated": sum(truncated_at(r, "chosen_index") for r in pairs),
        "pairs_rejected_truncated": sum(truncated_at(r, "rejected_index") for r in pairs),
        "rows_failed": len(failed),
        "rows_retried": sum(1 for r in done + failed if r.get("retries")),
        "rejects_input": len(input_rejects),
        "judge": totals,
        "verdict_parse_failure_rate": totals["verdict_unparsed"] / max(1, totals["comparisons"]),
        "verdict_unresolved_rate": totals["verdict_unresolved"] / max(1, totals["comparisons"]),
    }


def summary_text(
    counts: dict, timings: dict, run_dir: Path | str, settings, sampled_only: bool
) -> str:
    """The lines a run prints at its end: what was produced, skipped, truncated, and spent.

    ``settings`` is the run's ``PrefsSettings`` (candidates, their ``max_tokens``, the
    truncation policy).
    """
    lines = []
    if counts["rows_retried"]:
        lines.append(
            f"retried: {counts['rows_retried']} rows hit a transient engine error (an engine "
            "restarting) and were run again"
        )
    failed = f"{counts['rows_failed']} failed, {counts['rejects_input']} rejected on input"
    truncated = (
        f"truncated (finish_reason: length, max_tokens {settings.sampling.get('max_tokens')}): "
        f"{counts['candidates_truncated']} of {counts['candidates']} candidates"
    )
    wall = "wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    if sampled_only:
        return "\n".join(
            [
                *lines,
                f"candidate sets: {counts['candidate_sets']} x {settings.num_candidates} "
                f"(skipped: {counts['skipped_identical']} identical; {failed})",
                truncated,
                wall,
                f"output: {join(run_dir, 'candidates.parquet')}  (rejects: rejects.jsonl)",
            ]
        )
    j = counts["judge"]
    policy = settings.truncated
    return "\n".join(
        [
            *lines,
            f"pairs: {counts['pairs']} (skipped: {counts['skipped_identical']} identical, "
            f"{counts['skipped_no_preference']} no preference, "
            f"{counts['skipped_all_truncated']} all truncated, "
            f"{counts['skipped_truncated_preferred']} only truncated preferred; {failed})",
            f"{truncated}; truncated={policy}: {counts['pairs_chosen_truncated']} chosen, "
            f"{counts['pairs_rejected_truncated']} rejected",
            f"judge: {j['comparisons']} comparisons, {j['calls']} calls, {j['prompt_tokens']} "
            f"prompt + {j['completion_tokens']} generated tokens; verdicts unparsed "
            f"{j['verdict_unparsed']}, recovered {j['verdict_recovered']}, unresolved "
            f"{j['verdict_unresolved']}; criteria fallbacks {j['criteria_fallback']}",
            wall,
            f"output: {join(run_dir, 'prefs.parquet')}  (rejects: rejects.jsonl)",
        ]
    )
