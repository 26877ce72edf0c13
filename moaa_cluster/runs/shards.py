"""Result shards: the atomic parquet files a task's finished rows are written to.

A row whose shard has ``error`` null is finished: a rerun of the same run directory skips it
(resume without redoing or duplicating), while a row that failed is tried again.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moaa_cluster.runs.files import check_writable, write_parquet_atomic


def shard_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "shards"


def finished_ids(run_dir: Path) -> set[str]:
    """Ids that already have a finished (``error`` null) row in the run's shards."""
    d = shard_dir(run_dir)
    done: set[str] = set()
    for f in sorted(d.glob("*.parquet")) if d.exists() else []:
        t = pq.read_table(f, columns=["id", "error"]).to_pylist()
        done.update(r["id"] for r in t if r["error"] is None)
    return done


def write_shard(run_dir: Path, table: pa.Table) -> Path:
    """Writes one shard of finished rows atomically."""
    d = shard_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    return write_parquet_atomic(table, d / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")


def consolidate(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """One row per id from all shards, a finished row winning over an earlier failure.

    Returns:
        ``(finished, failed)`` rows.
    """
    best: dict[str, dict] = {}
    d = shard_dir(run_dir)
    for f in sorted(d.glob("*.parquet")) if d.exists() else []:
        for r in pq.read_table(f).to_pylist():
            prev = best.get(r["id"])
            if prev is None or (prev["error"] is not None and r["error"] is None):
                best[r["id"]] = r
    done = [r for r in best.values() if r["error"] is None]
    failed = [r for r in best.values() if r["error"] is not None]
    return done, failed


def open_run(run_dir: Path, specs, *, overwrite: bool = False) -> Path:
    """Readies ``run_dir`` for a resumable run before anything starts.

    Deletes it first with ``overwrite`` (otherwise its shards are resumed), checks that it
    can be written, and validates every model spec (paths present, backend settings sane).
    """
    run_dir = Path(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    check_writable(run_dir)
    for spec in specs:
        spec.validate()
    return run_dir
