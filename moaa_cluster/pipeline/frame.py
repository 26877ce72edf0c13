"""The row frame every pipeline task streams its rows through (Ray Data, resumable).

Rows stream through an actor pool of a task's worker class; each worker writes its finished
blocks as atomic parquet shards (:mod:`moaa_cluster.runs.shards`) and sends the driver only
their counts, so nothing row-sized travels back. The frame
owns the bookkeeping columns every shard has (``error``, ``finished_at``, ``retries``): a task
declares only its own columns with :func:`shard_schema`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from moaa_cluster.engines.faults import with_retries
from moaa_cluster.pipeline.progress import (
    CallTally,
    Progress,
    count_calls,
    flush_all,
    tally_reader,
)
from moaa_cluster.runs.shards import write_shard
from moaa_cluster.runs.storage import run_path

# a chat message as TRL's conversational format has it
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# what the frame adds to every row: its error (null when finished), when it finished, and the
# transient engine errors it survived (an engine restarting)
FRAME_FIELDS = (
    ("error", pa.string()),
    ("finished_at", pa.float64()),
    ("retries", pa.int32()),
)


def shard_schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A task's shard schema: its own ``fields`` (``id`` first) and the frame's columns."""
    names = [name for name, _ in fields]
    if not names or names[0] != "id":
        raise ValueError(f"a shard schema starts with `id`, got {names}")
    clash = {n for n, _ in FRAME_FIELDS} & set(names)
    if clash:
        raise ValueError(f"{sorted(clash)} are the frame's columns; a task does not declare them")
    return pa.schema([*fields, *FRAME_FIELDS])


BLOCK_ROWS = 4  # rows per block: the unit of progress, of shards and of resume
MAX_BLOCKS = 4096


def block_plan(
    n_rows: int, in_flight: int, rows_per_block: int | None = None
) -> tuple[int, int, int]:
    """How ``n_rows`` are cut into blocks and how many blocks a worker runs at once.

    A worker keeps ``in_flight`` rows in flight as several small blocks running
    concurrently, not one big block: a finished block is written (and counted by the
    progress bar) at once, and a slow row holds back only its own block.

    Returns:
        ``(blocks, rows_per_block, blocks_per_worker)``.
    """
    in_flight = max(1, in_flight)
    per_block = max(1, min(rows_per_block or BLOCK_ROWS, in_flight))
    blocks = max(1, min(-(-n_rows // per_block), MAX_BLOCKS))
    per_block = max(per_block, -(-n_rows // blocks))  # many rows: fewer, bigger blocks
    return blocks, per_block, max(1, -(-in_flight // per_block))


@dataclass(frozen=True)
class PoolSettings:
    """How a task's rows stream: its actor pool and its progress bar.

    Attributes:
        batch_size: Rows each actor keeps in flight.
        workers: Actors in the pool, at most.
        worker_cpus: CPUs each actor reserves.
        desc: The progress display's label.
        progress: Show progress (bars on a terminal, a line every half minute in a log).
        rows_per_block: Rows per block (:func:`block_plan`); None: :data:`BLOCK_ROWS`.
        calls: The model calls the rows are expected to make: the plan that progress and
            its ETA count against (None: rows only).
    """

    batch_size: int
    workers: int
    worker_cpus: float = 0.25
    desc: str = "rows"
    progress: bool = True
    rows_per_block: int | None = None
    calls: int | None = None


class _Counted:
    """Ray Data actor around a task's worker: the worker's backends count their calls, and
    every finished block is written here as a shard; only its counts go on."""

    def __init__(
        self, worker_cls: type, worker_kwargs: dict, tally, run_dir: str, schema: pa.Schema
    ) -> None:
        self.worker = worker_cls(**worker_kwargs)
        self.run_dir = run_path(run_dir)
        self.schema = schema
        if getattr(self.worker, "backends", None):
            self.worker.backends = count_calls(self.worker.backends, tally)

    async def __call__(self, batch: pa.Table):
        try:
            async for out in self.worker(batch):
                if out.num_rows == 0:
                    continue
                write_shard(self.run_dir, out.select(self.schema.names).cast(self.schema))
                yield pa.table(
                    {"rows": [out.num_rows], "failed": [out.num_rows - out["error"].null_count]}
                )
        finally:
            flush_all(getattr(self.worker, "backends", None) or {})


def _pipeline(ds, n_rows: int, job: dict, pool: PoolSettings):
    """The Ray Data plan: ``ds`` in blocks, mapped by a pool of counted, writing workers."""
    from ray.data import ActorPoolStrategy

    blocks, per_block, concurrent = block_plan(n_rows, pool.batch_size, pool.rows_per_block)
    return ds.repartition(target_num_rows_per_block=per_block).map_batches(
        _Counted,
        fn_constructor_kwargs=job,
        batch_size=per_block,
        batch_format="pyarrow",
        # an async worker runs several blocks at once in its event loop
        compute=ActorPoolStrategy(
            size=max(1, min(pool.workers, -(-blocks // concurrent))),
            max_tasks_in_flight_per_actor=concurrent,
            max_concurrent_calls_per_actor=concurrent,
        ),
        num_cpus=pool.worker_cpus,
    )


def rows_dataset(rows: list[dict], schema: pa.Schema):
    """A list of row dicts as a Ray dataset of ``schema`` (one block; :func:`stream_dataset`
    cuts it): small inputs built on the driver (a layered pass's rows, ``synth.run_rows``
    given a list)."""
    import ray

    return ray.data.from_arrow(pa.Table.from_pylist(rows, schema=schema))


@dataclass(frozen=True)
class StreamJob:
    """What runs the rows: ``worker_cls(**worker_kwargs)``, an async callable taking and
    yielding a ``pyarrow.Table`` batch with ``output_schema``'s columns, whose blocks are
    written as shards of ``run_dir``."""

    worker_cls: type
    worker_kwargs: dict
    output_schema: pa.Schema
    run_dir: Path | str


def stream_dataset(ds, n_rows: int, job: StreamJob, pool: PoolSettings) -> int:
    """Streams the ``n_rows`` rows of the Ray dataset ``ds`` through ``job``'s worker actors,
    which write shards as blocks finish; the driver gets only each block's counts.

    Each of the ``pool.workers`` actors keeps ``pool.batch_size`` rows in flight, as blocks of
    ``pool.rows_per_block`` rows (:func:`block_plan`) that run concurrently in the actor.
    Extra columns of ``ds`` are passed on to the worker.

    Returns:
        Number of rows written.
    """
    import ray
    from ray.data import DataContext

    if not n_rows:
        return 0
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress below counts calls and rows
    ctx.print_on_execution_start = False
    tally = ray.remote(num_cpus=0)(CallTally).remote() if pool.progress else None
    actor_kwargs = {
        "worker_cls": job.worker_cls,
        "worker_kwargs": job.worker_kwargs,
        "tally": tally,
        "run_dir": str(job.run_dir),
        "schema": job.output_schema,
    }
    stats = _pipeline(ds, n_rows, actor_kwargs, pool)
    written = 0
    reader = tally_reader(tally) if tally is not None else None
    progress = Progress(pool.desc, n_rows, pool.calls, reader, enabled=pool.progress)
    try:
        with progress:
            for block in stats.iter_batches(batch_size=None, batch_format="pyarrow"):
                n = sum(block["rows"].to_pylist())
                written += n
                if n:
                    progress.rows_done(n)
    finally:
        if tally is not None:
            ray.kill(tally)
    return written


class RowWorker:
    """Base of every task's Ray Data worker: the rows of a batch run concurrently.

    A subclass sets ``schema`` (its shard schema) and implements ``start(row)`` (the output
    fields a row keeps even when it fails) and ``async fill(row, out)`` (the row's work,
    filling ``out``). ``fill`` is retried as a whole on transient engine errors
    (:func:`with_retries`, ``attempts``); any other error is recorded in the row's
    ``error`` and the batch goes on. Every row gets ``finished_at`` and ``retries``.
    """

    schema: pa.Schema
    attempts: int = 4

    def start(self, row: dict) -> dict:
        raise NotImplementedError

    async def fill(self, row: dict, out: dict) -> None:
        raise NotImplementedError

    async def _one(self, row: dict) -> dict:
        out = {**self.start(row), "error": None}
        retries: list[int] = []
        try:
            await with_retries(
                lambda: self.fill(row, out),
                attempts=self.attempts,
                label=f"row {row['id']}",
                on_retry=lambda n, exc: retries.append(n),
            )
        except Exception as exc:  # recorded per row; the run goes on
            out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        out["finished_at"] = time.time()
        out["retries"] = len(retries)
        return out

    async def __call__(self, batch: pa.Table):
        results = await asyncio.gather(*(self._one(r) for r in batch.to_pylist()))
        yield pa.Table.from_pylist(results, schema=self.schema)
