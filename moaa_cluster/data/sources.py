"""Instruction sources: what a source is, how its records become rows or rejects.

Two readers share the rules here (:func:`record_row`, :func:`input_reject`, :func:`picked`):
:func:`load_rows` reads on the driver, for the small inputs of prefs, eval and judge-eval
(questions, prompts); synth streams its instructions through Ray Data read tasks
(:mod:`moaa_cluster.data.input_stream`), so they never pass through the driver.

Files are read by :mod:`moaa_cluster.data.records` (formats, byte-order marks, the rule for
text UTF-8 cannot encode); a record can fail only itself: whatever goes wrong while reading,
adapting or hashing it becomes its reject, never a failed run. A directory that is not a saved
``datasets`` directory is read as its data files, in name order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.adapters import stable_id, to_conversation
from moaa_cluster.data.records import Reject, dataset_records, describe, read_records
from moaa_cluster.runs.files import jsonable

# the columns of a row as both readers make it (load_rows, data.input_stream)
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("system", pa.string()),
        ("turns", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
    ]
)
_DATA = Path(__file__).resolve().parent.parent / "data"
# demo: 40 conversations we wrote (32 single-turn, 8 two-turn); heldout: 12 other single-turn
# instructions the embedded pipeline evaluates on (never trained on)
BUILTIN = {"demo": _DATA / "demo.jsonl", "heldout": _DATA / "heldout.jsonl"}


@dataclass(frozen=True)
class Source:
    """One input source as configured under ``dataset.sources.<name>``.

    Attributes:
        name: Source name; part of every row's id and written as the row's ``source``.
        path: JSONL/JSON/Parquet file, a ``datasets.save_to_disk`` directory, or
            ``builtin:demo``.
        hub_id: ``datasets`` hub id, used when ``path`` is unset (needs the hub enabled).
        split: Split to read from a hub dataset or a DatasetDict directory.
        limit: Keep at most this many records.
        sample_seed: With ``limit``, draw a seeded random sample instead of the first rows.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    subset: str | None = None
    split: str = "train"
    limit: int | None = None
    sample_seed: int | None = None


def _hub_enabled() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False")


def resolve(src: Source) -> Path | None:
    """The local path ``src`` reads (a builtin resolved), or None when it reads the hub.

    Raises:
        FileNotFoundError: The path does not exist (with a hint when the hub could read it).
        ValueError: Neither ``path`` nor ``hub_id`` is set.
    """
    local_missing = (
        src.path
        and not src.path.startswith("builtin:")
        and not Path(os.path.expanduser(src.path)).exists()
    )
    if local_missing and src.hub_id and _hub_enabled():
        return None
    if src.path:
        if src.path.startswith("builtin:"):
            key = src.path.split(":", 1)[1]
            if key not in BUILTIN:
                raise FileNotFoundError(f"unknown builtin dataset {key!r}; known: {list(BUILTIN)}")
            return BUILTIN[key]
        path = Path(os.path.expanduser(src.path))
        if not path.exists():
            hint = (
                f" (or enable the hub, HF_HUB_OFFLINE=0, to read {src.hub_id})"
                if src.hub_id
                else ""
            )
            raise FileNotFoundError(f"source {src.name}: {path} does not exist{hint}")
        return path
    if src.hub_id:
        return None
    raise ValueError(f"source {src.name}: set path or hub_id")


def hub_records(src: Source) -> Iterator[tuple[str, object]]:
    """``(where, record)`` of a hub dataset's split (the hub must be enabled)."""
    import datasets

    ds = datasets.load_dataset(src.hub_id, src.subset, split=src.split)
    yield from dataset_records(ds, src.hub_id)


DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
# a directory `datasets.save_to_disk` wrote (read as one dataset by the datasets library)
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def data_paths(src: Source, path: Path) -> list[Path]:
    """What ``path`` reads as: itself (a file, a saved dataset), or, for any other directory,
    its data files (``DATA_SUFFIXES``, at any depth) in name order."""
    if not path.is_dir() or any((path / m).exists() for m in SAVED_MARKERS):
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"source {src.name}: no data files ({DATA_SUFFIXES}) in {path}")
    return files


def _records(src: Source) -> Iterator[tuple[str, object]]:
    path = resolve(src)
    if path is None:
        yield from hub_records(src)
        return
    for f in data_paths(src, path):
        yield from read_records(f, src.split)


def picked(total: int, limit: int | None, seed: int | None) -> range | list[int]:
    """Which of a source's ``total`` records its ``limit`` keeps, in record order.

    All of them without a limit (or a limit at or above the total); with ``seed``, a seeded
    random sample; otherwise the first ``limit``.
    """
    if limit is None or limit >= total:
        return range(total)
    if seed is None:
        return range(limit)
    return sorted(random.Random(seed).sample(range(total), limit))


def record_row(source: str, where: str, rec: object) -> dict:
    """The row of one record: ``id, source, source_id, system, turns, answers``.

    Raises:
        Reject: The record is not a conversation (or was one already).
    """
    if isinstance(rec, Reject):
        raise rec
    conv = to_conversation(rec)
    return {
        "id": stable_id(source, conv),
        "source": source,
        "source_id": conv.source_id,
        "system": conv.system,
        "turns": list(conv.turns),
        "answers": list(conv.answers),
    }


def input_reject(source: str, where: str, rec: object, exc: BaseException) -> dict:
    """The reject record of a record that could not become a row (``stage: input``)."""
    return {
        "source": source,
        "where": where,
        "stage": "input",
        "reason": str(exc) if isinstance(exc, Reject) else describe(exc),
        # the raw record when it was parsed (None for a line that was not)
        "record": jsonable(rec.record if isinstance(rec, Reject) else rec),
    }


def load_rows(sources: list[Source], limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Reads, samples, validates and ids every source; keeps at most ``limit`` rows in all.

    Every record of the (sampled) sources ends as exactly one row or one reject, except
    that valid records beyond ``limit`` are dropped: they are still read, validated and
    counted for duplicates, so the rejects do not depend on ``limit`` and the rows are the
    first ``limit`` rows of the unlimited read.

    Returns:
        ``(rows, rejects)``. A row has ``id, source, source_id, system, turns, answers``; a
        reject has ``source, where, stage, reason`` and the raw ``record`` when it could be
        parsed (``None`` otherwise).
    """
    rows: list[dict] = []
    rejects: list[dict] = []
    seen: dict[str, str] = {}
    for src in sources:
        records = list(_records(src))
        records = [records[i] for i in picked(len(records), src.limit, src.sample_seed)]
        for where, rec in records:
            try:
                row = record_row(src.name, where, rec)
                if row["id"] in seen:
                    raise Reject(f"duplicate of {seen[row['id']]} (same source and content)")
            except Exception as exc:  # a record can fail only itself
                rejects.append(input_reject(src.name, where, rec, exc))
                continue
            seen[row["id"]] = where
            if limit is None or len(rows) < limit:
                rows.append(row)
    return rows, rejects
