"""A synth run's counts: per block of shard rows, vectorized with pyarrow (a block's counts are
summed over blocks by :func:`merge_counts`), and the same counts row by row
(:func:`run_counts`, for rows a test or a caller holds)."""

from __future__ import annotations

import pyarrow as pa


def final_answer_truncated(calls: list[dict], final_layer: int) -> bool:
    """Whether some turn's final answer (the last layer's call) stopped at ``max_tokens``."""
    return any(c["layer"] == final_layer and c["finish_reason"] == "length" for c in calls)


def _calls_where(done: pa.Table, mask_of) -> tuple[pa.Table, pa.Array]:
    """The calls of ``done``'s rows where ``mask_of(calls)`` holds, and their rows' indices."""
    import pyarrow.compute as pc

    calls = pc.list_flatten(done["calls"])
    parents = pc.list_parent_indices(done["calls"])
    mask = mask_of(calls)
    return calls.filter(mask), parents.filter(mask)


def truncated_flags(done: pa.Table, final_layer: int) -> pa.Array:
    """Per row, :func:`final_answer_truncated` of its calls (vectorized)."""
    import pyarrow.compute as pc

    _, rows = _calls_where(
        done,
        lambda c: pc.and_(
            pc.equal(pc.struct_field(c, "layer"), final_layer),
            pc.equal(pc.struct_field(c, "finish_reason"), "length"),
        ),
    )
    seen = pc.unique(rows).cast(pa.int64())
    return pc.is_in(pa.array(range(done.num_rows), pa.int64()), value_set=seen)


def _per_model(calls: pa.Array) -> dict:
    import pyarrow.compute as pc

    if len(calls) == 0:
        return {}
    t = pa.table(
        {k: pc.struct_field(calls, k) for k in ("model", "prompt_tokens", "completion_tokens")}
    )
    g = t.group_by("model").aggregate(
        [("model", "count"), ("prompt_tokens", "sum"), ("completion_tokens", "sum")]
    )
    return {
        r["model"]: {
            "calls": r["model_count"],
            "prompt_tokens": r["prompt_tokens_sum"] or 0,
            "completion_tokens": r["completion_tokens_sum"] or 0,
        }
        for r in g.to_pylist()
    }


def block_counts(batch: pa.Table, final_layer: int, excluded: bool) -> dict:
    """:func:`run_counts` of one block's finished rows, vectorized; summed over blocks by
    :func:`merge_counts`."""
    import pyarrow.compute as pc

    done = batch.filter(pc.is_null(batch["error"]))
    calls = pc.list_flatten(done["calls"])
    reasons = pc.struct_field(calls, "finish_reason").value_counts().to_pylist()
    cut_calls, cut_rows = _calls_where(done, lambda c: pc.is_valid(pc.struct_field(c, "context")))
    cut = int(pc.sum(truncated_flags(done, final_layer).cast(pa.int64())).as_py() or 0)
    return {
        "rows_ok": done.num_rows,
        "rows_failed": 0,
        "rejects_input": 0,
        "multi_turn_rows": int(
            pc.sum(pc.greater(pc.list_value_length(done["turns"]), 1)).as_py() or 0
        ),
        "rows_retried": int(pc.sum(pc.greater(pc.fill_null(done["retries"], 0), 0)).as_py() or 0),
        "tokens_per_model": _per_model(calls),
        "finish_reasons": {r["values"]: r["counts"] for r in reasons},
        "calls_with_cut_context": len(cut_calls),
        "rows_with_cut_context": len(pc.unique(cut_rows)),
        "rows_failed_context": 0,
        "rows_truncated": cut,
        "rows_truncated_excluded": cut if excluded else 0,
        "rows_sft": done.num_rows - (cut if excluded else 0),
    }


def merge_counts(parts: list[dict]) -> dict:
    """Sums counts (nested dicts summed key by key)."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                out[k] = merge_counts([out.get(k, {}), v])
            else:
                out[k] = out.get(k, 0) + v
    return out


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
