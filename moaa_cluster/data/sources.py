"""Instruction sources: what a source is, how its records become rows or rejects.

Two readers share the rules here (:func:`record_row`, :func:`input_reject`, :func:`picked`):
:func:`load_rows` reads on the driver, for the small inputs of prefs, eval and judge-eval
(questions, prompts); synth streams its instructions through Ray Data read tasks
(:mod:`moaa_cluster.data.input_stream`), so they never pass through the driver.

Files are read by :mod:`moaa_cluster.data.records` (formats, byte-order marks, the rule for
text UTF-8 cannot encode); a record can fail only itself: whatever goes wrong while reading,
adapting or hashing it becomes its reject, never a failed run. A directory that is not a saved
``datasets`` directory is read as its data files, in name order.

A source's ``path`` may be on object storage (``s3://bucket/prefix/file.jsonl``, or a prefix
read as a directory): it is listed like a local directory, and each object is read from a
local temporary copy by the same readers, its rejects located by the URI. The other files a
user names by path (baseline answers, labeled judge pairs, a benchmark's files) are read the
same way through :func:`input_records`.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.adapters import stable_id, to_conversation
from moaa_cluster.data.records import (
    Reject,
    UnreadableFile,
    dataset_records,
    describe,
    read_records,
)
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage
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
        path: JSONL/JSON/Parquet file, a directory of them, a ``datasets.save_to_disk``
            directory (any of them local or an object-storage URI), or ``builtin:demo``.
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


def _missing_hint(src: Source) -> str:
    return f" (or enable the hub, HF_HUB_OFFLINE=0, to read {src.hub_id})" if src.hub_id else ""


def object_kind(uri: str, what: str) -> str | None:
    """:func:`~moaa_cluster.runs.storage.kind` of ``uri``; a failed look-up (no access, no such
    bucket endpoint, ...) is a one-line ``ConfigError`` naming ``what`` and the URI."""
    try:
        return storage.kind(uri)
    except OSError as exc:
        reason = " ".join(str(exc).split())  # one line
        raise ConfigError(f"{what}: cannot read {uri}: {reason}") from exc


def require_object(uri: str, what: str) -> None:
    """Checks that an object (or a prefix) is at ``uri``.

    Raises:
        ConfigError: Nothing is at ``uri``, or it cannot be looked up.
    """
    if object_kind(uri, what) is None:
        raise ConfigError(f"{what}: {uri} does not exist")


def _resolve_uri(src: Source) -> str | None:
    """:func:`resolve` for a ``path`` on object storage."""
    found = object_kind(src.path, f"source {src.name}")
    if found is not None:
        return src.path
    if src.hub_id and _hub_enabled():
        return None
    raise ConfigError(f"source {src.name}: {src.path} does not exist{_missing_hint(src)}")


def resolve(src: Source) -> Path | str | None:
    """The path ``src`` reads (a builtin resolved; a URI stays a string), or None when it
    reads the hub.

    Raises:
        FileNotFoundError: The local path does not exist (with a hint when the hub could
            read it).
        ConfigError: The object or prefix a URI names does not exist (or cannot be listed).
        ValueError: Neither ``path`` nor ``hub_id`` is set.
    """
    if src.path and storage.is_uri(src.path):
        return _resolve_uri(src)
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
            raise FileNotFoundError(f"source {src.name}: {path} does not exist{_missing_hint(src)}")
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


def data_paths(src: Source, path: Path | str) -> list[Path] | list[str]:
    """What ``path`` reads as: itself (a file, a saved dataset), or, for any other directory,
    its data files (``DATA_SUFFIXES``, at any depth) in name order (URIs for a URI)."""
    if storage.is_uri(path):
        return _uri_data_paths(src, path)
    if not path.is_dir() or any((path / m).exists() for m in SAVED_MARKERS):
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"source {src.name}: no data files ({DATA_SUFFIXES}) in {path}")
    return files


def _uri_data_paths(src: Source, uri: str) -> list[str]:
    """:func:`data_paths` of an object-storage URI, from one listing; the order is the one
    ``sorted`` gives the same files as local ``Path``s (by path components)."""
    if storage.kind(uri) != "dir":
        return [uri]
    found = storage.walk_files(uri)
    if any(f in SAVED_MARKERS for f in found):
        return [uri]
    files = sorted((f for f in found if f.endswith(DATA_SUFFIXES)), key=lambda f: f.split("/"))
    if not files:
        raise ConfigError(f"source {src.name}: no data files ({DATA_SUFFIXES}) in {uri}")
    return [str(storage.join(uri, f)) for f in files]


# reads the records of a local file or directory: (where, record or Reject) pairs
Reader = Callable[[Path], Iterator[tuple[str, object]]]


def file_records(path: Path | str, split: str = "train") -> Iterator[tuple[str, object]]:
    """:func:`~moaa_cluster.data.records.read_records` of one of :func:`data_paths`' paths; an
    object-storage URI is read from a local temporary copy, its locations naming the URI."""
    if storage.is_uri(path):
        return object_records(str(path), partial(read_records, split=split))
    return read_records(path, split)


def input_records(
    path: Path | str, what: str, read: Reader = read_records
) -> Iterator[tuple[str, object]]:
    """``read`` of one input file a user names (baseline answers, labeled pairs, a benchmark's
    file): a local path as it is; a URI is checked at once (a missing object is a
    ``ConfigError`` naming ``what``), then read as :func:`object_records` reads it."""
    if not storage.is_uri(path):
        return read(Path(path))
    require_object(str(path), what)
    return object_records(str(path), read)


def object_records(uri: str, read: Reader) -> Iterator[tuple[str, object]]:
    """``read`` of a local temporary copy of the object (or prefix) ``uri``; every location it
    gives, and the message of an :class:`UnreadableFile` it raises, name the URI instead."""
    shown = uri.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="moaa-input-") as tmp:
        try:
            local = storage.fetch(uri, Path(tmp))
        except OSError as exc:  # gone since it was listed, no access
            raise UnreadableFile(f"cannot read {shown}: {describe(exc)}") from exc
        # every location a reader gives starts with the copy's name, the object's name
        name = local.name
        try:
            for where, rec in read(local):
                yield (shown + where[len(name) :] if where.startswith(name) else where), rec
        except UnreadableFile as exc:
            raise UnreadableFile(str(exc).replace(str(local), shown)) from exc


def _records(src: Source) -> Iterator[tuple[str, object]]:
    path = resolve(src)
    if path is None:
        yield from hub_records(src)
        return
    for f in data_paths(src, path):
        yield from file_records(f, src.split)


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
