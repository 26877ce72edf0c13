"""Result shards: the atomic parquet files a task's finished rows are written to.

A row whose shard has ``error`` null is finished: a rerun of the same run directory skips it
(resume without redoing or duplicating), while a row that failed is tried again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moaa_cluster.runs import storage


def shard_dir(run_dir: Path | str) -> Path | str:
    return storage.join(run_dir, "shards")


def finished_id_array(run_dir: str | Path) -> pa.Array:
    """The ids of the run's finished rows, read from the shards' ``id``/``error`` columns
    only (sorted, unique): what a rerun skips. Runs where the shards are (a Ray task)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    d = shard_dir(run_dir)
    files = storage.list_files(d, ".parquet")
    if not files:
        return pa.array([], pa.string())
    fs, _ = storage.filesystem(d)
    paths = [storage.filesystem(f)[1] for f in files]
    table = pads.dataset(paths, format="parquet", filesystem=fs).to_table(
        columns=["id"], filter=pc.field("error").is_null()
    )
    return pc.unique(table["id"]).sort()


def write_shard(run_dir: Path | str, table: pa.Table) -> Path | str:
    """Writes one shard of finished rows atomically (locally or on object storage)."""
    path = storage.join(shard_dir(run_dir), f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")
    storage.write_parquet(table, path)
    return path


def read_shard_files(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Ray Data step: the shard files named in ``batch["path"]`` as one table of ``schema``
    (read together, multi-threaded; a shard written before a field existed reads that field
    as null)."""
    import pyarrow.dataset as pads

    paths = batch["path"].to_pylist()
    fs, _ = storage.filesystem(paths[0])
    local = [storage.filesystem(p)[1] for p in paths]
    try:
        return pads.dataset(local, format="parquet", filesystem=fs, schema=schema).to_table()
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):  # an older shard schema
        tables = []
        for p in local:
            t = pads.dataset(p, format="parquet", filesystem=fs).to_table()
            tables.append(pa.Table.from_pylist(t.to_pylist(), schema=schema))
        return pa.concat_tables(tables)


FILES_PER_READ = 64


def shard_dataset(files: list, schema: pa.Schema):
    """The shard ``files`` as a Ray dataset of ``schema`` (read by tasks, 64 files each)."""
    import ray

    return ray.data.from_items(
        [{"path": str(f)} for f in files], override_num_blocks=max(1, len(files) // FILES_PER_READ)
    ).map_batches(
        read_shard_files,
        fn_kwargs={"schema": schema},
        batch_format="pyarrow",
        batch_size=FILES_PER_READ,
    )


def finished_among(shards, ids: set[str]) -> set[str]:
    """Which of ``ids`` (failed rows': few) also have a finished row in the Ray dataset
    ``shards`` (a failure retried to success by a rerun). Nothing is read when none failed."""
    if not ids:
        return set()
    import pyarrow.compute as pc

    wanted = pa.array(sorted(ids), pa.string())

    def pick(batch: pa.Table) -> pa.Table:
        done = pc.and_(pc.is_null(batch["error"]), pc.is_in(batch["id"], value_set=wanted))
        return batch.filter(done).select(["id"])

    return {r["id"] for r in shards.map_batches(pick, batch_format="pyarrow").take_all()}


def last_failures(failed: list[dict], done: set[str]) -> list[dict]:
    """Of the failed rows (few), the last failure of each id that never finished (not in
    ``done``), in the order they failed."""
    last = {
        r["id"]: r
        for r in sorted(failed, key=lambda r: r["finished_at"] or 0.0)
        if r["id"] not in done
    }
    return list(last.values())


def consolidate(run_dir: Path | str) -> tuple[list[dict], list[dict]]:
    """One row per id from all shards, a finished row winning over an earlier failure.

    Returns:
        ``(finished, failed)`` rows.
    """
    best: dict[str, dict] = {}
    for f in storage.list_files(shard_dir(run_dir), ".parquet"):
        fs, p = storage.filesystem(f)
        for r in pq.read_table(p, filesystem=fs).to_pylist():
            prev = best.get(r["id"])
            if prev is None or (prev["error"] is not None and r["error"] is None):
                best[r["id"]] = r
    done = [r for r in best.values() if r["error"] is None]
    failed = [r for r in best.values() if r["error"] is not None]
    return done, failed


def open_run(run_dir: Path | str, specs, *, overwrite: bool = False) -> Path | str:
    """Readies ``run_dir`` for a resumable run before anything starts.

    Deletes it first with ``overwrite`` (otherwise its shards are resumed), checks that it
    can be written, and validates every model spec (paths present, backend settings sane).
    """
    run_dir = storage.run_path(run_dir)
    if overwrite:
        storage.remove(run_dir)
    storage.check_writable(run_dir)
    for spec in specs:
        spec.validate()
    return run_dir
