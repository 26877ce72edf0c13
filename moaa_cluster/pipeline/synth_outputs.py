"""What a synth run writes: its shard rows, ``sft.parquet``, ``rejects.jsonl``, counts, summary.

``sft.parquet`` is TRL's conversational format (``messages``) plus provenance: every call of
the mixture (``calls``: model, text, tokens, finish reason, what was cut to fit) and
``truncated``: some turn's final (aggregated) answer stopped at ``max_tokens``
(``finish_reason: length``), so it ends mid-sentence. With ``truncated: exclude`` (the
default) such rows are kept out of ``sft.parquet``, which trains the model, and written to
``sft_truncated.parquet`` instead; ``truncated: keep`` leaves them in, flagged.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Mixture
from moaa_cluster.pipeline.frame import MESSAGE, shard_schema
from moaa_cluster.runs.files import write_parquet_atomic
from moaa_cluster.runs.shards import consolidate
from moaa_cluster.runs.task_run import write_rejects

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


def final_answer_truncated(calls: list[dict], final_layer: int) -> bool:
    """Whether some turn's final answer (the last layer's call) stopped at ``max_tokens``."""
    return any(c["layer"] == final_layer and c["finish_reason"] == "length" for c in calls)


def check_truncated_policy(policy: str) -> str:
    if policy not in TRUNCATED_POLICIES:
        raise ConfigError(f"synth truncated: {policy!r} is not one of {list(TRUNCATED_POLICIES)}")
    return policy


def _sft_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{c: r[c] for c in (*SFT_COLUMNS, "truncated")} for r in rows], schema=SFT_SCHEMA
    )


def write_outputs(
    run_dir: Path, mixture: Mixture, input_rejects: list[dict], truncated: str = "exclude"
) -> dict:
    """Consolidates shards into ``sft.parquet`` (and ``sft_truncated.parquet`` when
    ``truncated`` is ``exclude`` and some final answer was cut off) and ``rejects.jsonl``;
    returns counts."""
    check_truncated_policy(truncated)
    run_dir = Path(run_dir)
    ok, failed = consolidate(run_dir)
    ok.sort(key=lambda r: (r["source"], r["id"]))
    final_layer = len(mixture.layers) - 1
    for r in ok:
        r["truncated"] = final_answer_truncated(r["calls"], final_layer)
    excluded = truncated == "exclude"
    cut = [r for r in ok if excluded and r["truncated"]]
    kept = [r for r in ok if not (excluded and r["truncated"])]
    write_parquet_atomic(_sft_table(kept), run_dir / "sft.parquet")
    if cut:
        write_parquet_atomic(_sft_table(cut), run_dir / TRUNCATED_FILE)
    else:  # a rerun that keeps them (or has none) leaves no stale file behind
        (run_dir / TRUNCATED_FILE).unlink(missing_ok=True)
    write_rejects(
        run_dir,
        input_rejects,
        [
            {
                "source": r["source"],
                "where": r["id"],
                "stage": "inference",
                "reason": r["error"],
                "record": {"turns": r["turns"], "system": r["system"]},
            }
            for r in failed
        ],
    )
    counts = run_counts(ok, failed, input_rejects)
    counts["rows_truncated"] = sum(r["truncated"] for r in ok)
    counts["rows_truncated_excluded"] = len(cut)
    counts["rows_sft"] = len(kept)
    return counts


def _tokens_per_model(ok: list[dict]) -> dict[str, dict[str, int]]:
    tokens: dict[str, dict[str, int]] = {}
    for r in ok:
        for c in r["calls"]:
            t = tokens.setdefault(
                c["model"], {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            t["calls"] += 1
            t["prompt_tokens"] += c["prompt_tokens"]
            t["completion_tokens"] += c["completion_tokens"]
    return tokens


def run_counts(ok: list[dict], failed: list[dict], input_rejects: list[dict]) -> dict:
    """The manifest's counts: rows, tokens per model, finish reasons, contexts cut to fit."""
    finish = {}
    for r in ok:
        for c in r["calls"]:
            finish[c["finish_reason"]] = finish.get(c["finish_reason"], 0) + 1
    # calls whose carried answers were shortened to fit (shards from before have no `context`)
    cut = [sum(1 for c in r["calls"] if c.get("context")) for r in ok]
    return {
        "rows_ok": len(ok),
        "rows_failed": len(failed),
        "rejects_input": len(input_rejects),
        "multi_turn_rows": sum(1 for r in ok if len(r["turns"]) > 1),
        # shards written before the column existed have no `retries`
        "rows_retried": sum(1 for r in ok + failed if r.get("retries")),
        "tokens_per_model": _tokens_per_model(ok),
        "finish_reasons": finish,
        "calls_with_cut_context": sum(cut),
        "rows_with_cut_context": sum(1 for n in cut if n),
        "rows_failed_context": sum(1 for r in failed if r["error"].startswith("ContextOverflow")),
    }


def summary_lines(counts: dict, timings: dict, run_dir: Path) -> list[str]:
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
        f"output: {Path(run_dir) / 'sft.parquet'} ({rows_sft} rows)  (rejects: rejects.jsonl)"
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
