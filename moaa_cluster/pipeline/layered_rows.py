"""The rows between the passes of a layered synth run, as Ray Data datasets.

A row carries its input columns, its answers so far (``state``, JSON by answer column), its
calls so far and the transient errors it survived (``retries_sum``). A pass's finished rows
are joined back onto the rows that took part (``Dataset.join`` on ``id``) and merged; rows
without the pass's turn pass on; rows the pass failed drop out (recorded by the caller). The
rows that finish every pass are written as the run's shards by Ray Data tasks. What reaches
the driver: counts and the failed rows' ids (failures are few).
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from moaa_cluster.moa.mixture import Mixture, conversation
from moaa_cluster.runs import storage
from moaa_cluster.runs.shards import shard_dataset, shard_dir, write_shard

CARRIED = ("state", "calls", "retries_sum")
MAX_JOIN_PARTITIONS = 64


def carried_schema(input_schema: pa.Schema, call_type: pa.DataType) -> pa.Schema:
    """A row between passes: its input columns, then what it carries."""
    return pa.schema(
        [
            *input_schema,
            ("state", pa.string()),
            ("calls", pa.list_(call_type)),
            ("retries_sum", pa.int32()),
        ]
    )


def _start(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    cols = {f.name: batch[f.name] for f in schema if f.name not in CARRIED}
    cols.update(
        state=pa.array(["{}"] * n, pa.string()),
        calls=pa.array([[]] * n, schema.field("calls").type),
        retries_sum=pa.array([0] * n, pa.int32()),
    )
    return pa.table(cols, schema=schema)


def start_rows(rows, input_schema: pa.Schema, schema: pa.Schema):
    """The rows as the first pass reads them (no answer, no call yet), materialized."""
    return (
        rows.select_columns(input_schema.names)
        .map_batches(_start, fn_kwargs={"schema": schema}, batch_format="pyarrow")
        .materialize()
    )


def _in_pass(batch: pa.Table, turn: int, takes_part: bool) -> pa.Table:
    has = pc.greater(pc.list_value_length(batch["turns"]), turn)
    return batch.filter(has if takes_part else pc.invert(has))


def split_by_turn(live, turn: int):
    """``(rows that have turn ``turn``, materialized; the others, lazy)``."""
    taking = live.map_batches(
        _in_pass, fn_kwargs={"turn": turn, "takes_part": True}, batch_format="pyarrow"
    ).materialize()
    others = live.map_batches(
        _in_pass, fn_kwargs={"turn": turn, "takes_part": False}, batch_format="pyarrow"
    )
    return taking, others


def _answered(batch: pa.Table) -> pa.Table:
    """A pass's finished shard rows, renamed to be joined onto the carried rows."""
    done = batch.filter(pc.is_null(batch["error"]))
    return pa.table(
        {
            "id": done["id"],
            "new_state": done["state"],
            "new_calls": done["calls"],
            "new_retries": done["retries"],
        }
    )


def _merge(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    rows = []
    for r in batch.to_pylist():
        state = {**json.loads(r["state"]), **json.loads(r["new_state"])}
        rows.append(
            {
                **{f.name: r[f.name] for f in schema if f.name not in CARRIED},
                "state": json.dumps(state),
                "calls": [*r["calls"], *r["new_calls"]],
                "retries_sum": (r["retries_sum"] or 0) + (r["new_retries"] or 0),
            }
        )
    return pa.Table.from_pylist(rows, schema=schema)


def merge_pass(taking, others, pass_dir, pass_schema: pa.Schema, schema: pa.Schema, n_taking: int):
    """The rows after a pass (materialized, ``schema``): ``taking`` joined with the pass's
    finished rows (their new answers merged in), then the ``others`` unchanged."""
    files = storage.list_files(shard_dir(pass_dir), ".parquet")
    if not (files and n_taking):
        return others.materialize()
    answered = shard_dataset(files, pass_schema).map_batches(_answered, batch_format="pyarrow")
    parts = max(1, min(MAX_JOIN_PARTITIONS, n_taking // 100_000 + 1))
    merged = taking.join(answered, "inner", num_partitions=parts, on=("id",)).map_batches(
        _merge, fn_kwargs={"schema": schema}, batch_format="pyarrow"
    )
    return others.union(merged).materialize()


def failed_in_pass(pass_dir) -> dict[str, str]:
    """Ids of a pass's rows that failed and never finished there, with the last error."""
    import pyarrow.dataset as pads

    files = storage.list_files(shard_dir(pass_dir), ".parquet")
    if not files:
        return {}
    fs, _ = storage.filesystem(files[0])
    t = pads.dataset([storage.filesystem(f)[1] for f in files], format="parquet", filesystem=fs)
    t = t.to_table(columns=["id", "error", "finished_at"])
    done = set(t.filter(pc.is_null(t["error"]))["id"].to_pylist())
    bad = t.filter(pc.is_valid(t["error"])).sort_by("finished_at").to_pylist()
    return {r["id"]: r["error"] for r in bad if r["id"] not in done}


def _final(batch: pa.Table, run_dir: str, mixture: Mixture, schema: pa.Schema) -> pa.Table:
    now = time.time()
    rows = []
    for r in batch.to_pylist():
        state = json.loads(r["state"])
        rows.append(
            {
                **{n: r[n] for n in schema.names if n in r and n not in CARRIED},
                "messages": conversation(mixture, {**r, **state}),
                "calls": sorted(r["calls"], key=lambda c: (c["turn"], c["layer"], c["seat"])),
                "error": None,
                "finished_at": now,
                "retries": r["retries_sum"] or 0,
            }
        )
    if rows:
        write_shard(run_dir, pa.Table.from_pylist(rows, schema=schema))
    return pa.table({"rows": [len(rows)]})


def write_finished(live, run_dir, mixture: Mixture, schema: pa.Schema) -> int:
    """Ray Data tasks write the rows that finished every pass as the run's shards (in the
    resident path's ``schema``); returns how many."""
    counts = live.map_batches(
        _final,
        fn_kwargs={"run_dir": str(run_dir), "mixture": mixture, "schema": schema},
        batch_format="pyarrow",
    ).take_all()
    return sum(c["rows"] for c in counts)


def write_failed(rows, failed: dict[str, str], schema: pa.Schema, run_dir) -> int:
    """The rows of ``rows`` (the run's input dataset) that failed in a pass, as failed rows of
    the run's shards, each with its pass's error (few rows: one shard from the driver)."""
    wanted = pa.array(sorted(failed), pa.string())
    picked = rows.map_batches(
        lambda b: b.filter(pc.is_in(b["id"], value_set=wanted)), batch_format="pyarrow"
    ).take_all()
    now = time.time()
    out = [
        {
            **{n: r.get(n) for n in schema.names},
            "messages": [],
            "calls": [],
            "error": failed[r["id"]],
            "finished_at": now,
            "retries": 0,
        }
        for r in picked
    ]
    if out:
        write_shard(run_dir, pa.Table.from_pylist(out, schema=schema))
    return len(out)
