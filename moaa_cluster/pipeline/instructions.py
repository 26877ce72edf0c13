"""The Ray Data plan that reads a task's instructions and leaves the rows still to run.

read units -> validate (read tasks write their rejects) -> a task's own row check (Ray
tasks, e.g. synth's context-length floor; it writes its rejects) -> materialized in the object
store -> duplicates dropped (counted by one Ray task over the ``id`` column up to 1M rows,
by ``groupby("id").count()`` beyond) -> the run's ``limit`` -> the rows an
earlier run of the directory finished dropped (their ids read from the shards' ``id`` column
by a Ray task, then a vectorized ``is_in`` in each block). The driver holds dataset handles and
counts; the per-row work and the files are the workers'. See :mod:`moaa_cluster.data.input_stream`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from moaa_cluster.data import input_stream as stream
from moaa_cluster.data.sources import Source
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import REJECTS_DIR
from moaa_cluster.runs.shards import finished_id_array

MAX_SHUFFLE_PARTITIONS = 64
# up to this many rows, duplicates are counted and a run limit found by one Ray task over the
# id or read-order columns (~60 MB of ids at 1M rows); beyond, by a distributed groupby / sort
SMALL_INPUT_ROWS = 1_000_000


@dataclass
class Instructions:
    """What :func:`open_instructions` found.

    Attributes:
        todo: The rows to run (a lazy ``ray.data.Dataset``; ``_unit``/``_rec`` keep read order).
        valid: Rows after validation, checks, duplicates and the run limit.
        todo_rows: Rows of ``todo``; ``turns``: their turns in all.
        timings: ``read`` (read, validate, check, deduplicate) and ``resume_scan`` seconds.
    """

    todo: object
    valid: int
    todo_rows: int
    turns: int
    max_turns: int = 1
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RowCheck:
    """A task's per-row check: ``cls(rejects_dir=..., **kwargs)`` is called on a
    ``pyarrow.Table`` batch and returns the rows that pass (writing the rest as rejects).
    Run by at most ``workers`` Ray tasks of ``cpus`` CPUs each at a time; each worker process
    builds the check once per read (:func:`_check_batch`)."""

    cls: type
    kwargs: dict
    workers: int = 1
    cpus: float = 1.0


def _units(sources: list[Source]) -> list[stream.Unit]:
    units: list[stream.Unit] = []
    for src in sources:
        units += stream.source_units(src, len(units))
    return units


def _picks(sources: list[Source], units: list[stream.Unit]) -> dict:
    """Per unit of a source with a ``limit``, the record indices it keeps (counting pass)."""
    import ray

    limited = {s.name for s in sources if s.limit is not None}
    todo = [u for u in units if u.source in limited]
    if not todo:
        return {}
    counted = (
        ray.data.from_items(stream.units_json(todo))
        .map_batches(stream.count_units, batch_size=1)
        .take_all()
    )
    counts = {r["index"]: r["records"] for r in counted}
    picks: dict = {}
    for src in sources:
        if src.name in limited:
            picks.update(stream.unit_picks([u for u in todo if u.source == src.name], counts, src))
    return picks


def _read(sources: list[Source], rejects_dir: str, kind: stream.RecordKind):
    import ray

    units = _units(sources)
    ds = ray.data.from_items(stream.units_json(units), override_num_blocks=len(units)).map_batches(
        stream.read_units,
        batch_size=1,
        fn_kwargs={"rejects_dir": rejects_dir, "picks": _picks(sources, units), "kind": kind},
    )
    return ds.materialize()


_CHECKS: dict = {}


def _per_process(cache: dict, key: str, make, keep: int):
    """``cache[key]``, made by ``make()`` the first time in this worker process; a cache
    holding ``keep`` entries is emptied first (a long-lived worker does not keep old runs')."""
    if key not in cache:
        if len(cache) >= keep:
            cache.clear()
        cache[key] = make()
    return cache[key]


def _check_batch(batch: pa.Table, key: str, cls: type, kwargs: dict) -> pa.Table:
    """Ray Data step: ``batch`` through the read ``key``'s check, built once per worker
    process. Tasks rather than an actor pool: an actor is a new process that imports the
    check's libraries again (transformers, ~5 s here) on every read, a task worker keeps them."""
    return _per_process(_CHECKS, key, lambda: cls(**kwargs), keep=2)(batch)


def _checked(rows, rejects_dir: str, check: RowCheck):
    from ray.data import TaskPoolStrategy

    return rows.map_batches(
        _check_batch,
        fn_kwargs={
            "key": uuid.uuid4().hex,
            "cls": check.cls,
            "kwargs": {"rejects_dir": rejects_dir, **check.kwargs},
        },
        batch_format="pyarrow",
        batch_size=256,
        compute=TaskPoolStrategy(size=max(1, check.workers)),
        num_cpus=check.cpus,
    )


def _drop_pairs(batch: pa.Table, drop: set) -> pa.Table:
    keys = zip(batch["_unit"].to_pylist(), batch["_rec"].to_pylist(), strict=True)
    return batch.filter(pa.array([k not in drop for k in keys], pa.bool_()))


def _id_column(tables: tuple[pa.Table, ...]) -> pa.Array:
    """The ``id`` columns of ``tables`` as one array."""
    ids = [t["id"].combine_chunks() for t in tables if t.num_rows]
    return pa.concat_arrays(ids) if ids else pa.array([], pa.string())


def _repeated_ids(*tables: pa.Table) -> list[str]:
    """The ids that occur more than once in the ``id`` columns of ``tables`` (a Ray task)."""
    counts = pc.value_counts(_id_column(tables))
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()


def _duplicate_ids(rows, small: bool) -> list[str]:
    """The ids of ``rows`` (a materialized Ray dataset) that occur more than once: one Ray task
    over the ``id`` column for a ``small`` input (a shuffle's actors cost seconds here), a
    distributed ``groupby("id").count()`` otherwise."""
    import ray

    if small:
        refs = rows.select_columns(["id"]).to_arrow_refs()
        return ray.get(ray.remote(num_cpus=0)(_repeated_ids).remote(*refs))
    # a few partitions per 100k rows
    parts = max(1, min(MAX_SHUFFLE_PARTITIONS, rows.count() // 100_000 + 1))
    counted = rows.select_columns(["id"]).groupby("id", num_partitions=parts).count()
    return [
        r["id"]
        for r in counted.map_batches(
            lambda b: b.filter(pc.greater(b["count()"], 1)), batch_format="pyarrow"
        ).take_all()
    ]


def _deduplicated(rows, rejects_dir: str, kind: stream.RecordKind, small: bool):
    """``rows`` without the later occurrences of an id; their rejects written."""
    dup_ids = _duplicate_ids(rows, small)
    if not dup_ids:
        return rows
    wanted = pa.array(dup_ids, pa.string())
    located = rows.map_batches(
        lambda b: b.filter(pc.is_in(b["id"], value_set=wanted)), batch_format="pyarrow"
    ).take_all()
    rejects, drop = stream.first_occurrences(located, kind)
    stream.write_rejects_part(rejects_dir, f"2-duplicates-{uuid.uuid4().hex[:8]}", rejects)
    return rows.map_batches(_drop_pairs, fn_kwargs={"drop": drop}, batch_format="pyarrow")


def _read_keys(batch: pa.Table) -> pa.Array:
    """Each row's place in read order as one int64 (unit index, record index in the unit)."""
    unit = pc.cast(batch["_unit"].combine_chunks(), pa.int64())
    return pc.add(pc.multiply(unit, 2**32), pc.cast(batch["_rec"].combine_chunks(), pa.int64()))


def _last_key_kept(limit: int, *tables: pa.Table) -> int:
    """The read-order key of the ``limit``-th row of ``tables`` (a Ray task)."""
    import numpy as np

    keys = [_read_keys(t).to_numpy() for t in tables if t.num_rows]
    if not keys:
        return -1
    allk = np.concatenate(keys)
    k = min(limit, len(allk)) - 1
    return int(np.partition(allk, k)[k]) if k >= 0 else -1


def _up_to_key(batch: pa.Table, last: int) -> pa.Table:
    return batch.filter(pc.less_equal(_read_keys(batch), last))


def _first_rows(rows, limit: int, small: bool):
    """The first ``limit`` rows of ``rows`` in read order: for a ``small`` input, a Ray task
    finds the last key kept and each block is filtered against it; otherwise a distributed
    sort then a limit."""
    import ray

    if not small:
        return rows.sort(["_unit", "_rec"]).limit(limit)
    rows = rows.materialize()  # the keys and the filter read the same blocks, computed once
    refs = rows.select_columns(["_unit", "_rec"]).to_arrow_refs()
    last = ray.get(ray.remote(num_cpus=0)(_last_key_kept).remote(limit, *refs))
    return rows.map_batches(_up_to_key, fn_kwargs={"last": last}, batch_format="pyarrow")


_ID_SETS: dict = {}


def cached_ids(ref) -> pa.Array:
    """The id array behind the object ref ``ref``, fetched once per worker process (a Ray
    Data step filters every block it gets against it)."""
    import ray

    return _per_process(_ID_SETS, ref.hex(), lambda: ray.get(ref), keep=4)


def id_array_ref(rows):
    """An object ref to the sorted unique ids of the Ray dataset ``rows``, computed by a Ray
    task from the blocks' ``id`` columns (the driver holds only refs)."""
    import ray

    refs = rows.select_columns(["id"]).to_arrow_refs()
    return ray.remote(num_cpus=0)(_unique_ids).remote(*refs)


def _unique_ids(*tables: pa.Table) -> pa.Array:
    return pc.unique(_id_column(tables)).sort()


def unfinished(batch: pa.Table, finished) -> pa.Table:
    """Ray Data step: the rows of ``batch`` whose id is not in ``finished`` (an object ref of
    :func:`~moaa_cluster.runs.shards.finished_id_array`, fetched once per worker process)."""
    done = cached_ids(finished)
    if len(done) == 0:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=done)))


def read_valid(
    sources: list[Source],
    run_dir: Path | str,
    *,
    limit: int | None = None,
    check: RowCheck | None = None,
    kind: stream.RecordKind = stream.INSTRUCTIONS,
    clear: bool = True,
):
    """Reads ``sources`` as rows of ``kind`` for a run in ``run_dir`` (Ray must be up):
    validated, checked, without duplicates, the run's ``limit`` applied; the input rejects
    written under the run's ``rejects/`` (an earlier run's parts removed first unless
    ``clear`` is False: the task did, and wrote parts of its own). Returns the materialized
    Ray dataset."""
    rejects_dir = str(storage.join(run_dir, REJECTS_DIR))
    if clear:
        clear_rejects(run_dir)
    read = _read(sources, rejects_dir, kind)  # materialized: its count is known
    small = read.count() <= SMALL_INPUT_ROWS
    rows = _deduplicated(read, rejects_dir, kind, small)
    if limit is not None:  # the first rows in read order, before the task's check (as load_rows)
        rows = _first_rows(rows, limit, small)
    if check is not None:
        rows = _checked(rows, rejects_dir, check)
    return rows.materialize()


def drop_finished(rows, run_dir: Path | str):
    """``rows`` (a Ray dataset) without those an earlier run of ``run_dir`` finished: their
    ids read from the shards' ``id`` column by a Ray task, then a vectorized ``is_in`` per
    block (:func:`unfinished`)."""
    import ray

    finished = ray.remote(num_cpus=0)(finished_id_array).remote(str(run_dir))
    return rows.map_batches(unfinished, fn_kwargs={"finished": finished}, batch_format="pyarrow")


def open_instructions(
    sources: list[Source],
    run_dir: Path | str,
    *,
    limit: int | None = None,
    check: RowCheck | None = None,
) -> Instructions:
    """Plans and runs the read of ``sources`` for a run in ``run_dir`` (Ray must be up)."""
    t0 = time.monotonic()
    rows = read_valid(sources, run_dir, limit=limit, check=check)
    valid = rows.count()
    read_s = time.monotonic() - t0
    t0 = time.monotonic()
    todo = drop_finished(rows, run_dir)
    reduce = {"rows": sum, "turns": sum, "max_turns": max}
    stats = block_totals(todo, _turn_stats, reduce) if valid else {}
    return Instructions(
        todo=todo,
        valid=valid,
        todo_rows=stats.get("rows", 0),
        turns=stats.get("turns", 0),
        max_turns=stats.get("max_turns") or 1,
        timings={"read": read_s, "resume_scan": time.monotonic() - t0},
    )


def _turn_stats(batch: pa.Table) -> pa.Table:
    turns = pc.list_value_length(batch["turns"])
    most = pc.max(turns).as_py() if batch.num_rows else 0
    return pa.table(
        {"rows": [batch.num_rows], "turns": [pc.sum(turns).as_py() or 0], "max_turns": [most]}
    )


def block_totals(rows, stats, reduce: dict, **kwargs) -> dict:
    """Figures of the Ray dataset ``rows`` without a shuffle: ``stats(block, **kwargs)`` gives
    each block's figures as a one-row table, and the driver gets those rows only (one per
    block) and combines each column with ``reduce[column]`` (``sum``, ``max``). Ray Data's
    ``aggregate`` starts shuffle actors that cost seconds even for a few rows."""
    parts = rows.map_batches(
        stats, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None
    ).take_all()
    return {k: int(fn([p[k] for p in parts] or [0])) for k, fn in reduce.items()}


def clear_rejects(run_dir: Path | str) -> None:
    """Removes the input reject parts of an earlier run (a rerun writes them again)."""
    for f in storage.list_files(storage.join(run_dir, REJECTS_DIR), ".jsonl"):
        storage.remove(f)
