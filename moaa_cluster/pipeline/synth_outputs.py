"""What a synth run writes: its shard rows, ``sft.parquet``, ``rejects.jsonl``, counts, summary.

``sft.parquet`` is TRL's conversational format (``messages``) plus provenance: every call of
the mixture (``calls``: model, text, tokens, finish reason, what was cut to fit) and
``truncated``: some turn's final (aggregated) answer stopped at ``max_tokens``
(``finish_reason: length``), so it ends mid-sentence. With ``truncated: exclude`` (the
default) such rows are kept out of ``sft.parquet``, which trains the model, and written to
``sft_truncated.parquet`` instead; ``truncated: keep`` leaves them in, flagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Mixture
from moaa_cluster.pipeline.frame import MESSAGE, shard_schema
from moaa_cluster.pipeline.synth_counts import (  # noqa: F401  (re-exported)
    block_counts,
    final_answer_truncated,
    merge_counts,
    run_counts,
    truncated_flags,
)
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import (
    concat_rejects,
    remove_outputs,
    sorted_by_source_id,
    write_dataset,
)
from moaa_cluster.runs.shards import finished_among, last_failures, shard_dataset, shard_dir

CALL = pa.struct(
    [
        ("turn", pa.int32()),
        ("layer", pa.int32()),
        ("seat", pa.int32()),
        ("model", pa.string()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("seconds", pa.float64()),
        ("prompt", pa.string()),
        # JSON of the carried answers cut to fit the context (moa.budget.Fitted.record), or
        # null when nothing was cut; shards written before the field existed read as null
        ("context", pa.string()),
        ("system_folded", pa.bool_()),  # system text folded into the first user turn
    ]
)
SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("system", pa.string()),
        ("turns", pa.list_(pa.string())),
        ("messages", pa.list_(MESSAGE)),
        ("calls", pa.list_(CALL)),
    ]
)
SFT_COLUMNS = ("id", "source", "source_id", "messages", "calls")
SFT_SCHEMA = pa.schema(
    [*((n, SHARD_SCHEMA.field(n).type) for n in SFT_COLUMNS), ("truncated", pa.bool_())]
)
TRUNCATED_POLICIES = ("exclude", "keep")
TRUNCATED_FILE = "sft_truncated.parquet"


def check_truncated_policy(policy: str) -> str:
    if policy not in TRUNCATED_POLICIES:
        raise ConfigError(f"synth truncated: {policy!r} is not one of {list(TRUNCATED_POLICIES)}")
    return policy


SFT_DIR = "sft"  # the parquet dataset (a directory of files): the output at any size
SFT_FILE = "sft.parquet"  # one consolidated file (single_file: the small-run option)
TRUNCATED_DIR = "sft_truncated"


def finished_block(batch: pa.Table, final_layer: int) -> pa.Table:
    """A block of finished rows (``error`` null) as SFT rows, ``truncated`` flagged."""
    import pyarrow.compute as pc

    done = batch.filter(pc.is_null(batch["error"])).select(list(SFT_COLUMNS))
    return done.append_column("truncated", truncated_flags(done, final_layer)).cast(SFT_SCHEMA)


def _failures(failed: list[dict], done: set[str]) -> list[dict]:
    """The reject records of rows that failed and never finished (the last failure each)."""
    return [
        {
            "source": r["source"],
            "where": r["id"],
            "stage": "inference",
            "reason": r["error"],
            "record": {"turns": r["turns"], "system": r["system"]},
            "retried": bool(r.get("retries")),  # counted, then dropped from the record
        }
        for r in last_failures(failed, done)
    ]


_FAILED_COLUMNS = ["id", "source", "turns", "system", "error", "finished_at", "retries"]


def _block_summary(batch: pa.Table, final_layer: int, excluded: bool) -> dict:
    """One row per block: its counts and its failed rows (JSON; failures are few)."""
    import pyarrow.compute as pc

    failed = batch.filter(pc.is_valid(batch["error"])).select(_FAILED_COLUMNS).to_pylist()
    return {
        "counts": [json.dumps(block_counts(batch, final_layer, excluded))],
        "failed": [json.dumps(failed)],
    }


def _summarize(shards, final_layer: int, excluded: bool) -> tuple[dict, list[dict]]:
    """The run's counts and failed rows, from one pass over the shards."""
    blocks = shards.map_batches(
        _block_summary,
        fn_kwargs={"final_layer": final_layer, "excluded": excluded},
        batch_format="pyarrow",
    ).take_all()
    counts = merge_counts([json.loads(b["counts"]) for b in blocks])
    return counts, [r for b in blocks for r in json.loads(b["failed"])]


def _write_sft(
    shards, run_dir, counts: dict, final_layer: int, split_cut: bool, single_file: bool
) -> None:
    """The finished rows as ``sft/`` (and, ``split_cut``, the cut-off ones as
    ``sft_truncated/``), sorted by source and id (``runs.datasets.sorted_by_source_id``)."""
    finished = shards.map_batches(
        finished_block, fn_kwargs={"final_layer": final_layer}, batch_format="pyarrow"
    )
    sft = sorted_by_source_id(
        finished, counts["rows_ok"]
    ).materialize()  # in the object store, for the writes below
    _write(_where(sft, False) if split_cut else sft, run_dir, SFT_DIR, SFT_FILE, single_file)
    if split_cut:
        _write(_where(sft, True), run_dir, TRUNCATED_DIR, TRUNCATED_FILE, single_file)


def _where(sft, truncated: bool):
    """The rows of ``sft`` whose ``truncated`` flag is ``truncated``."""
    import pyarrow.compute as pc

    def pick(b: pa.Table) -> pa.Table:
        flag = b["truncated"]
        return b.filter(flag if truncated else pc.invert(flag))

    return sft.map_batches(pick, batch_format="pyarrow")


def _write(ds, run_dir: Path | str, directory: str, single: str, single_file: bool) -> None:
    path = storage.join(run_dir, single)
    if not single_file:
        storage.remove(path)
    write_dataset(ds, storage.join(run_dir, directory), path if single_file else None, SFT_SCHEMA)


def write_outputs(
    run_dir: Path | str,
    mixture: Mixture,
    truncated: str = "exclude",
    single_file: bool = True,
) -> dict:
    """Writes the run's outputs from its shards with Ray Data (Ray must be up); returns counts.

    ``sft/`` (a parquet dataset, rows sorted by source and id) holds the finished rows;
    with ``truncated: exclude`` the ones whose final answer was cut off go to
    ``sft_truncated/`` instead. ``single_file`` adds ``sft.parquet`` (and
    ``sft_truncated.parquet``) as one file each, copied from the directories a row group at a
    time. ``rejects.jsonl``: the input rejects the read tasks wrote, then the rows that failed
    in inference.
    """
    check_truncated_policy(truncated)
    run_dir = storage.run_path(run_dir)
    files = [str(f) for f in storage.list_files(shard_dir(run_dir), ".parquet")]
    final_layer = len(mixture.layers) - 1
    excluded = truncated == "exclude"
    counts, failures = run_counts([], [], []), []
    if files:
        shards = shard_dataset(
            files, SHARD_SCHEMA
        ).materialize()  # read once, for the counts and the writes
        counts, failed = _summarize(shards, final_layer, excluded)
        failures = _failures(failed, finished_among(shards, {r["id"] for r in failed}))
        split_cut = excluded and bool(counts["rows_truncated_excluded"])
        _write_sft(shards, run_dir, counts, final_layer, split_cut, single_file)
    else:
        _write(None, run_dir, SFT_DIR, SFT_FILE, single_file)
    if not counts.get("rows_truncated_excluded"):  # none now: nothing stale left behind
        remove_outputs(storage.join(run_dir, TRUNCATED_DIR), storage.join(run_dir, TRUNCATED_FILE))
    counts["rows_retried"] += sum(1 for r in failures if r.pop("retried", False))
    counts["rows_failed"] = len(failures)
    counts["rows_failed_context"] = sum(r["reason"].startswith("ContextOverflow") for r in failures)
    counts["rejects_input"] = concat_rejects(run_dir, failures)
    counts.setdefault("rows_truncated", 0)
    counts.setdefault("rows_truncated_excluded", 0)
    counts.setdefault("rows_sft", counts["rows_ok"])
    return counts


def summary_lines(
    counts: dict, timings: dict, run_dir: Path | str, single_file: bool = True
) -> list[str]:
    lines = [
        f"rows: {counts['rows_ok']} ok ({counts['multi_turn_rows']} multi-turn), "
        f"{counts['rows_failed']} failed in inference, {counts['rejects_input']} rejected on input",
    ]
    for model, t in counts["tokens_per_model"].items():
        lines.append(
            f"  {model}: {t['calls']} calls, {t['prompt_tokens']} prompt + "
            f"{t['completion_tokens']} generated tokens"
        )
    if counts.get("rows_truncated"):
        excluded = counts.get("rows_truncated_excluded", 0)
        where = (
            f"excluded from sft.parquet (kept in {TRUNCATED_FILE}; truncated=keep trains on them)"
            if excluded
            else "kept in sft.parquet, flagged `truncated` (truncated=exclude leaves them out)"
        )
        lines.append(
            f"truncated: {counts['rows_truncated']} rows end in a final answer cut off at "
            f"max_tokens (finish_reason: length): {where}"
        )
    if counts.get("calls_with_cut_context"):
        lines.append(
            f"context: {counts['calls_with_cut_context']} calls in "
            f"{counts['rows_with_cut_context']} rows had carried answers shortened to fit "
            "max_model_len (what was cut: calls.context in sft.parquet)"
        )
    if counts.get("rows_retried"):
        lines.append(
            f"retried: {counts['rows_retried']} rows hit a transient engine error (an engine "
            "restarting) and were run again"
        )
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    rows_sft = counts.get("rows_sft", counts["rows_ok"])
    lines.append(
        f"output: {storage.join(run_dir, SFT_DIR)}/ ({rows_sft} rows; a parquet dataset, "
        f"{'also as sft.parquet' if single_file else 'no single file'})  "
        "(rejects: rejects.jsonl)"
    )
    if counts["rows_failed"]:
        lines.append(
            f"WARNING: {counts['rows_failed']} rows failed in inference (reasons in rejects.jsonl); "
            "rerun the same command to retry only those rows"
        )
    if counts.get("rows_failed_context"):
        lines.append(
            f"  {counts['rows_failed_context']} of them cannot fit a model's max_model_len even "
            "with every carried answer cut (ContextOverflow): a rerun fails them again"
        )
    return lines
