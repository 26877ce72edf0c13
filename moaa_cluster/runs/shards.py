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


def finished_ids(run_dir: Path | str) -> set[str]:
    """Ids that already have a finished (``error`` null) row in the run's shards."""
    return set(finished_id_array(run_dir).to_pylist())


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
