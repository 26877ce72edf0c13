"""Instruction sources as a Ray Data stream: records go from storage to the workers, never
through the driver.

A source is cut into read units on the driver from file listings alone (a file, each data
file of a directory, a saved ``datasets`` directory, a hub split; local or on object
storage). Ray Data read tasks read the units (:func:`moaa_cluster.data.sources.file_records`:
an object is copied to the worker's local disk, so formats, byte-order marks and malformed
lines behave exactly as in :func:`moaa_cluster.data.sources.load_rows`) and
validate every record into a row in the same task; a task writes its rejects, with their
reasons, as one JSONL part under the run's ``rejects/``. What reaches the driver is
unit-sized or duplicate-sized, never row-sized:

* a source's ``limit`` picks from per-unit record counts (a counting pass, only for
  sources with a limit), the same picks :func:`~moaa_cluster.data.sources.picked` makes;
* duplicates are counted by one Ray task over the ``id`` column (a Ray Data
  ``groupby("id").count()`` beyond 1M rows); only the duplicated ids'
  locations come back, to name the first occurrence in each reject;
* a run ``limit`` keeps the first rows in read order (a Ray task finds the last key kept, or a
  distributed sort beyond 1M rows).

Rows keep their read order as ``_unit``/``_rec`` (unit index, record index in the unit).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa

from moaa_cluster.data import sources
from moaa_cluster.data.records import Reject
from moaa_cluster.data.sources import (
    Source,
    data_paths,
    file_records,
    hub_records,
    input_reject,
    picked,
    record_row,
    resolve,
)
from moaa_cluster.runs import storage
from moaa_cluster.runs.files import jsonl_line

# the columns of a streamed input row: a row of load_rows plus where it was read and its order
ROW_SCHEMA = pa.schema(
    [*sources.ROW_SCHEMA, ("where", pa.string()), ("_unit", pa.int64()), ("_rec", pa.int64())]
)
_ROWS_PER_BATCH = 1024


@dataclass(frozen=True)
class RecordKind:
    """What a read task makes of a kind of record (instructions; judge-eval's labeled pairs).

    Attributes:
        row: ``(source, where, record) -> row``; raises on a record that cannot be one.
        reject: ``(source, where, record, exc) -> reject``: the record's reject with its reason.
        duplicate: ``(row, first_where) -> reject``: a later occurrence of an id.
        schema: The rows' columns, ``where``, ``_unit`` and ``_rec`` included.
    """

    row: Callable[[str, str, object], dict]
    reject: Callable[[str, str, object, BaseException], dict]
    duplicate: Callable[[dict, str], dict]
    schema: pa.Schema


def _duplicate_instruction(row: dict, first: str) -> dict:
    return input_reject(
        row["source"],
        row["where"],
        {"turns": row["turns"], "system": row["system"]},
        Reject(f"duplicate of {first} (same source and content)"),
    )


INSTRUCTIONS = RecordKind(record_row, input_reject, _duplicate_instruction, ROW_SCHEMA)


@dataclass(frozen=True)
class Unit:
    """One read task's input: a file, a saved dataset directory, or a hub split."""

    index: int  # read order across all sources
    source: str
    path: str | None  # a local path or a URI; None: the source's hub split
    split: str = "train"
    hub_id: str | None = None
    subset: str | None = None


def source_units(src: Source, first_index: int) -> list[Unit]:
    """The read units of ``src`` (raises as ``load_rows`` does for a missing path)."""
    path = resolve(src)
    if path is None:
        return [Unit(first_index, src.name, None, src.split, src.hub_id, src.subset)]
    files = data_paths(src, path)
    return [Unit(first_index + i, src.name, str(f), src.split) for i, f in enumerate(files)]


def unit_records(unit: Unit) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` of one unit, in file order."""
    if unit.path is None:
        src = Source(unit.source, hub_id=unit.hub_id, subset=unit.subset, split=unit.split)
        return hub_records(src)
    return file_records(unit.path, unit.split)


def unit_rows(
    unit: Unit, picks: list[int] | None, kind: RecordKind = INSTRUCTIONS
) -> Iterator[tuple[dict | None, dict | None]]:
    """``(row, None)`` or ``(None, reject)`` for each picked record of ``unit`` (None: all)."""
    wanted = None if picks is None else set(picks)
    for i, (where, rec) in enumerate(unit_records(unit)):
        if wanted is not None and i not in wanted:
            continue
        try:
            row = kind.row(unit.source, where, rec)
        except Exception as exc:  # a record can fail only itself
            yield None, kind.reject(unit.source, where, rec, exc)
            continue
        yield {**row, "where": where, "_unit": unit.index, "_rec": i}, None


def write_rejects_part(rejects_dir: str, name: str, records: list[dict]) -> None:
    """Writes one JSONL part of rejects atomically (nothing when there is none)."""
    if not records:
        return
    data = b"".join(jsonl_line(r) for r in records)
    storage.write_bytes(storage.join(storage.run_path(rejects_dir), f"{name}.jsonl"), data)


def read_units(
    batch: dict, rejects_dir: str, picks: dict, kind: RecordKind = INSTRUCTIONS
) -> Iterator[pa.Table]:
    """Ray Data read step: each unit of ``batch`` into row tables of ``kind``; its rejects
    into a part."""
    for raw in batch["unit"]:
        unit = Unit(**json.loads(raw))
        rows, rejects = [], []
        for row, reject in unit_rows(unit, picks.get(unit.index), kind):
            if reject is not None:
                rejects.append(reject)
                continue
            rows.append(row)
            if len(rows) >= _ROWS_PER_BATCH:
                yield pa.Table.from_pylist(rows, schema=kind.schema)
                rows = []
        write_rejects_part(rejects_dir, f"1-input-{unit.index:06d}", rejects)
        if rows:
            yield pa.Table.from_pylist(rows, schema=kind.schema)


def count_units(batch: dict) -> dict:
    """Ray Data counting step: records per unit (for a source's ``limit``)."""
    units = [Unit(**json.loads(raw)) for raw in batch["unit"]]
    return {
        "index": [u.index for u in units],
        "records": [sum(1 for _ in unit_records(u)) for u in units],
    }


def unit_picks(units: list[Unit], counts: dict[int, int], src: Source) -> dict[int, list[int]]:
    """Per unit of ``src``, the record indices its ``limit`` keeps (:func:`picked`)."""
    offsets, total = [], 0
    for u in units:
        offsets.append(total)
        total += counts[u.index]
    chosen = picked(total, src.limit, src.sample_seed)
    out: dict[int, list[int]] = {u.index: [] for u in units}
    k = 0
    for g in chosen:
        while k + 1 < len(units) and g >= offsets[k + 1]:
            k += 1
        out[units[k].index].append(g - offsets[k])
    return out


def first_occurrences(
    located: list[dict], kind: RecordKind = INSTRUCTIONS
) -> tuple[list[dict], set[tuple[int, int]]]:
    """From every occurrence of the duplicated ids: the rejects of the later ones (naming the
    first) and their ``(_unit, _rec)`` keys, to drop."""
    by_id: dict[str, list[dict]] = {}
    for r in located:
        by_id.setdefault(r["id"], []).append(r)
    rejects, drop = [], set()
    for occurrences in by_id.values():
        occurrences.sort(key=lambda r: (r["_unit"], r["_rec"]))
        first = occurrences[0]["where"]
        for r in occurrences[1:]:
            rejects.append(kind.duplicate(r, first))
            drop.add((r["_unit"], r["_rec"]))
    return rejects, drop


def units_json(units: list[Unit]) -> list[dict]:
    return [{"unit": json.dumps(asdict(u))} for u in units]
