"""What a prefs (or sample) run writes: its shard rows, ``prefs.parquet`` (TRL's preference
format) or ``candidates.parquet``, ``rejects.jsonl``, the counts and the summary it prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from moaa_cluster.judge.judge import COUNT_FIELDS
from moaa_cluster.pipeline.frame import MESSAGE, shard_schema
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import (
    REJECTS_DIR,
    concat_rejects,
    remove_outputs,
    sorted_by_source_id,
    write_dataset,
)
from moaa_cluster.runs.shards import finished_among, last_failures, shard_dataset, shard_dir
from moaa_cluster.runs.storage import join

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


PREFS_DIR = "prefs"  # the pairs as a parquet dataset (a directory of files), at any size
PREFS_FILE = "prefs.parquet"  # the same rows in one file (what train-dpo reads from a run)
CANDIDATES_DIR = "candidates"
CANDIDATES_FILE = "candidates.parquet"
SKIPS_PART = "4-prefs-skips"  # the summary tasks' reject parts (after the input's 1-3)


def write_outputs(run_dir: Path | str, sample_only: bool = False) -> dict:
    """Writes the run's outputs from its shards with Ray Data (Ray must be up); returns counts.

    ``prefs/`` (a parquet dataset, pairs sorted by source and id) and ``prefs.parquet`` (TRL's
    preference format); with ``sample_only`` (``moaa sample``) ``candidates/`` and
    ``candidates.parquet`` instead. One pass over the shards counts the rows per block and
    writes each block's skipped rows as a reject part; only counts and the failed rows (few)
    reach the driver. ``rejects.jsonl``: the input's rejects (parts the read tasks wrote), the
    skipped rows, then the rows that failed in inference and never finished.
    """
    run_dir = storage.run_path(run_dir)
    rejects_dir = storage.join(run_dir, REJECTS_DIR)
    for part in storage.list_files(rejects_dir, ".jsonl"):  # this pass writes them again
        if str(part).rsplit("/", 1)[-1].startswith(SKIPS_PART):
            storage.remove(part)
    files = storage.list_files(shard_dir(run_dir), ".parquet")
    counts, failures = run_counts([], [], []), []
    kept, columns, directory, single = (
        ("sampled", CANDIDATE_COLUMNS, CANDIDATES_DIR, CANDIDATES_FILE)
        if sample_only
        else ("ok", PAIR_COLUMNS, PREFS_DIR, PREFS_FILE)
    )
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    rows = None
    if files:
        shards = shard_dataset(files, SHARD_SCHEMA).materialize()
        blocks = shards.map_batches(
            _block_summary, fn_kwargs={"rejects_dir": str(rejects_dir)}, batch_format="pyarrow"
        ).take_all()
        counts = merge_counts([json.loads(b["counts"]) for b in blocks])
        failed = [r for b in blocks for r in json.loads(b["failed"])]
        failures = _failures(failed, finished_among(shards, {r["id"] for r in failed}))
        n = counts["candidate_sets"] if sample_only else counts["pairs"]
        rows = _rows_of(shards, kept, schema, n)
    if not sample_only:
        remove_outputs(
            storage.join(run_dir, CANDIDATES_DIR), storage.join(run_dir, CANDIDATES_FILE)
        )
    write_dataset(rows, storage.join(run_dir, directory), storage.join(run_dir, single), schema)
    if sample_only:  # a sample run has no pairs: an empty prefs.parquet, as before
        write_dataset(
            None,
            storage.join(run_dir, PREFS_DIR),
            storage.join(run_dir, PREFS_FILE),
            pa.schema([SHARD_SCHEMA.field(c) for c in PAIR_COLUMNS]),
        )
    counts["rows_retried"] += sum(1 for r in failures if r.pop("retried", False))
    counts["rows_failed"] = len(failures)
    skipped = sum(counts[k] for k in SKIP_COUNTS)
    counts["rejects_input"] = concat_rejects(run_dir, failures) - skipped
    return counts


SKIP_COUNTS = (
    "skipped_identical",
    "skipped_no_preference",
    "skipped_all_truncated",
    "skipped_truncated_preferred",
)
_FAILED_COLUMNS = ["id", "source", "prompt", "error", "finished_at", "retries"]


def _block_summary(batch: pa.Table, rejects_dir: str) -> dict:
    """One row per block of shards: the counts of its finished rows, its failed rows (JSON;
    failures are few); its skipped rows are written as a reject part here."""
    import uuid

    import pyarrow.compute as pc

    from moaa_cluster.data.input_stream import write_rejects_part

    done = batch.filter(pc.is_null(batch["error"])).to_pylist()
    failed = batch.filter(pc.is_valid(batch["error"])).select(_FAILED_COLUMNS).to_pylist()
    write_rejects_part(rejects_dir, f"{SKIPS_PART}-{uuid.uuid4().hex[:12]}", _skips(done))
    return {
        "counts": [json.dumps(run_counts(done, [], []))],
        "failed": [json.dumps(failed)],
    }


def merge_counts(parts: list[dict]) -> dict:
    """Block counts (:func:`run_counts` of each block's finished rows) summed; the rates
    recomputed from the summed judge totals."""
    out = run_counts([], [], [])
    for p in parts:
        for k, v in p.items():
            if k == "judge":
                out["judge"] = {f: out["judge"][f] + v[f] for f in COUNT_FIELDS}
            elif not k.endswith("_rate"):
                out[k] += v
    totals = out["judge"]
    out["verdict_parse_failure_rate"] = totals["verdict_unparsed"] / max(1, totals["comparisons"])
    out["verdict_unresolved_rate"] = totals["verdict_unresolved"] / max(1, totals["comparisons"])
    return out


def _rows_of(shards, status: str, schema: pa.Schema, n_rows: int):
    """The ``n_rows`` finished rows of ``status`` with ``schema``'s columns, sorted by source
    and id (``runs.datasets.sorted_by_source_id``)."""
    import pyarrow.compute as pc

    def pick(b: pa.Table) -> pa.Table:
        keep = pc.and_(pc.is_null(b["error"]), pc.equal(b["status"], status))
        return b.filter(keep).select(schema.names).cast(schema)

    return sorted_by_source_id(shards.map_batches(pick, batch_format="pyarrow"), n_rows)


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


def _failures(failed: list[dict], done: set[str]) -> list[dict]:
    """The reject records of rows that failed and never finished (the last failure each)."""
    return [
        {
            "source": r["source"],
            "where": r["id"],
            "stage": "inference",
            "reason": r["error"],
            "record": {"prompt": r["prompt"]},
            "retried": bool(r.get("retries")),  # counted, then dropped from the record
        }
        for r in last_failures(failed, done)
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
