"""Reading instruction sources, validating them into rows, and writing run outputs.

Inputs are read on the driver: a malformed line must become a ``rejects`` entry with its line
number, not a failed read task, and duplicate detection needs the whole input anyway. The
instruction sets this method uses (tens of thousands of prompts) fit easily in memory.

Files are read by :mod:`moaa_cluster.data.records` (formats, byte-order marks, the rule for
text UTF-8 cannot encode); a record can fail only itself: whatever goes wrong while reading,
adapting or hashing it becomes its reject, never a failed run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moaa_cluster.data.adapters import stable_id, to_conversation
from moaa_cluster.data.records import Reject, dataset_records, describe, read_records
from moaa_cluster.runs.files import jsonable

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


def _records(src: Source) -> Iterator[tuple[str, object]]:
    local_missing = (
        src.path
        and not src.path.startswith("builtin:")
        and not Path(os.path.expanduser(src.path)).exists()
    )
    if local_missing and src.hub_id and _hub_enabled():
        src = Source(**{**src.__dict__, "path": None})
    if src.path:
        if src.path.startswith("builtin:"):
            key = src.path.split(":", 1)[1]
            if key not in BUILTIN:
                raise FileNotFoundError(f"unknown builtin dataset {key!r}; known: {list(BUILTIN)}")
            path = BUILTIN[key]
        else:
            path = Path(os.path.expanduser(src.path))
        if not path.exists():
            hint = (
                f" (or enable the hub, HF_HUB_OFFLINE=0, to read {src.hub_id})"
                if src.hub_id
                else ""
            )
            raise FileNotFoundError(f"source {src.name}: {path} does not exist{hint}")
        yield from read_records(path, src.split)
    elif src.hub_id:
        import datasets

        ds = datasets.load_dataset(src.hub_id, src.subset, split=src.split)
        yield from dataset_records(ds, src.hub_id)
    else:
        raise ValueError(f"source {src.name}: set path or hub_id")


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
        if src.limit is not None and src.limit < len(records):
            if src.sample_seed is not None:
                picked = sorted(
                    random.Random(src.sample_seed).sample(range(len(records)), src.limit)
                )
                records = [records[i] for i in picked]
            else:
                records = records[: src.limit]
        for where, rec in records:
            try:
                if isinstance(rec, Reject):
                    raise rec
                conv = to_conversation(rec)
                row_id = stable_id(src.name, conv)
                if row_id in seen:
                    raise Reject(f"duplicate of {seen[row_id]} (same source and content)")
            except Exception as exc:  # a record can fail only itself
                rejects.append(
                    {
                        "source": src.name,
                        "where": where,
                        "stage": "input",
                        "reason": str(exc) if isinstance(exc, Reject) else describe(exc),
                        # the raw record when it was parsed (None for a line that was not)
                        "record": jsonable(rec.record if isinstance(rec, Reject) else rec),
                    }
                )
                continue
            seen[row_id] = where
            if limit is not None and len(rows) >= limit:
                continue
            rows.append(
                {
                    "id": row_id,
                    "source": src.name,
                    "source_id": conv.source_id,
                    "system": conv.system,
                    "turns": list(conv.turns),
                    "answers": list(conv.answers),
                }
            )
    return rows, rejects
