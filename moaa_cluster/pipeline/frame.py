"""The row frame every pipeline task streams its rows through (Ray Data, resumable).

Rows stream through an actor pool of a task's worker class; finished blocks come back to the
driver and are written as atomic parquet shards (:mod:`moaa_cluster.runs.shards`). The frame
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
    """Ray Data actor around a task's worker: the worker's backends count their calls."""

    def __init__(self, worker_cls: type, worker_kwargs: dict, tally) -> None:
        self.worker = worker_cls(**worker_kwargs)
        if getattr(self.worker, "backends", None):
            self.worker.backends = count_calls(self.worker.backends, tally)

    async def __call__(self, batch: pa.Table):
        try:
            async for out in self.worker(batch):
                yield out
        finally:
            flush_all(getattr(self.worker, "backends", None) or {})


def _pipeline(table: pa.Table, worker_cls: type, worker_kwargs: dict, pool: PoolSettings, tally):
    """The Ray Data plan: ``table`` in blocks, mapped by a pool of counted workers."""
    import ray
    from ray.data import ActorPoolStrategy

    blocks, per_block, concurrent = block_plan(table.num_rows, pool.batch_size, pool.rows_per_block)
    return (
        ray.data.from_arrow(table)
        .repartition(blocks)
        .map_batches(
            _Counted,
            fn_constructor_kwargs={
                "worker_cls": worker_cls,
                "worker_kwargs": worker_kwargs,
                "tally": tally,
            },
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
    )


def stream_rows(
    rows: list[dict],
    input_schema: pa.Schema,
    worker_cls: type,
    worker_kwargs: dict,
    output_schema: pa.Schema,
    run_dir: Path,
    pool: PoolSettings,
) -> int:
    """Streams ``rows`` through ``worker_cls`` actors; writes shards as blocks finish.

    ``worker_cls(**worker_kwargs)`` must be an async callable taking and yielding a
    ``pyarrow.Table`` batch with ``output_schema``'s columns. Each of the ``pool.workers``
    actors keeps ``pool.batch_size`` rows in flight, as blocks of ``pool.rows_per_block``
    rows (:func:`block_plan`) that run concurrently in the actor.

    Returns:
        Number of rows written.
    """
    import ray
    from ray.data import DataContext

    if not rows:
        return 0
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress below counts calls and rows
    ctx.print_on_execution_start = False
    tally = ray.remote(num_cpus=0)(CallTally).remote() if pool.progress else None
    table = pa.Table.from_pylist(rows, schema=input_schema)
    ds = _pipeline(table, worker_cls, worker_kwargs, pool, tally)
    written = 0
    reader = tally_reader(tally) if tally is not None else None
    progress = Progress(pool.desc, len(rows), pool.calls, reader, enabled=pool.progress)
    try:
        with progress:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if batch.num_rows == 0:
                    continue
                write_shard(run_dir, batch.select(output_schema.names).cast(output_schema))
                written += batch.num_rows
                progress.rows_done(batch.num_rows)
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
