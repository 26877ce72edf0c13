"""Training data: read, validate and freeze the rows a training run learns from.

The driver validates once and writes ``train_data.parquet`` into the run directory; the Ray
Train workers read that file (on a multi-node cluster the run directory must be on shared
storage, as Ray Train's ``storage_path`` must be). Rows that cannot train go to
``rejects.jsonl`` with the reason; nothing is dropped silently. Files are read by
:mod:`moaa_cluster.data.records`: a malformed line, invalid UTF-8 or text UTF-8 cannot encode
rejects its record only, never the training run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.records import Reject, UnreadableFile, describe, read_records
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage

# the file a stage run directory hands to the next stage
RUN_FILES = {"sft": "sft.parquet", "dpo": "prefs.parquet"}
# the parquet dataset directory a stage writes at any size (synth: ``sft/``), read when the
# single file was not written (``single_file=false``)
RUN_DIRS = {"sft": "sft"}
COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}
ROLES = {"system", "user", "assistant"}


def resolve_path(kind: str, path: str | Path) -> Path | str:
    """A file, or a run directory of the stage that produces ``kind``'s data (local, or on
    object storage: ``s3://...``)."""
    if storage.is_uri(path):
        return _resolve_uri(kind, str(path))
    p = Path(path)
    if p.is_dir():
        dataset_dir = p / RUN_DIRS.get(kind, RUN_FILES[kind])
        if not (p / RUN_FILES[kind]).exists() and dataset_dir.is_dir():
            return dataset_dir
        if not (p / RUN_FILES[kind]).exists():
            raise ConfigError(
                f"{p} is a directory without {RUN_FILES[kind]}: give a "
                f"{'synth' if kind == 'sft' else 'prefs'} run directory or a data file"
            )
        return p / RUN_FILES[kind]
    if not p.exists():
        raise ConfigError(f"training data not found: {p}")
    return p


def _resolve_uri(kind: str, path: str) -> str:
    """:func:`resolve_path` for a run directory or data file on object storage."""
    found = storage.kind(path)
    if found is None:
        raise ConfigError(f"training data not found: {path}")
    if found == "file":
        return path
    single = storage.join(path, RUN_FILES[kind])
    if storage.kind(single) == "file":
        return single
    dataset_dir = storage.join(path, RUN_DIRS.get(kind, RUN_FILES[kind]))
    if storage.kind(dataset_dir) == "dir":
        return dataset_dir
    raise ConfigError(
        f"{path} is a directory without {RUN_FILES[kind]}: give a "
        f"{'synth' if kind == 'sft' else 'prefs'} run directory or a data file"
    )


def _read(path: Path) -> list[tuple[str, object]]:
    """``(where, record or Reject)`` for every record of a training data file (or of every
    file of a parquet dataset directory)."""
    if path.is_dir():
        return [rec for f in sorted(path.glob("*.parquet")) for rec in _read(f)]
    if path.suffix not in (".parquet", ".jsonl", ".json") and not path.name.endswith(".jsonl.gz"):
        raise ConfigError(f"{path}: training data must be .parquet, .jsonl(.gz) or .json")
    try:
        return list(read_records(path))
    except UnreadableFile as exc:
        raise ConfigError(str(exc)) from exc


def _check_messages(value: object, what: str, *, last_assistant: bool) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Reject(f"{what} must be a non-empty list of messages")
    out = []
    for m in value:
        # isinstance first: a role that is a list or dict cannot be looked up in a set
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise Reject(f"{what}: every message needs a role in {sorted(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise Reject(f"{what}: a {m['role']} message has empty content")
        out.append({"role": m["role"], "content": m["content"]})
    if last_assistant and out[-1]["role"] != "assistant":
        raise Reject(f"{what} must end with an assistant message")
    return out


def _sft_row(rec: dict) -> dict:
    return {"messages": _check_messages(rec.get("messages"), "messages", last_assistant=True)}


def _dpo_row(rec: dict) -> dict:
    def turn(value: object, what: str, last_assistant: bool) -> list[dict]:
        if isinstance(value, str):  # TRL's plain-text preference format
            role = "assistant" if last_assistant else "user"
            value = [{"role": role, "content": value}]
        return _check_messages(value, what, last_assistant=last_assistant)

    row = {
        "prompt": turn(rec.get("prompt"), "prompt", last_assistant=False),
        "chosen": turn(rec.get("chosen"), "chosen", last_assistant=True),
        "rejected": turn(rec.get("rejected"), "rejected", last_assistant=True),
    }
    if row["prompt"][-1]["role"] != "user":
        raise Reject("prompt must end with a user message")
    if row["chosen"] == row["rejected"]:
        raise Reject("chosen and rejected are identical")
    return row


def prepare(kind: str, path: str | Path, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Valid training rows and rejects from ``path``.

    Every record read before ``limit`` valid rows are reached ends as exactly one row or one
    reject ``{"index", "where", "id", "reason"}``: ``index`` counts records (blank lines are
    not records) from 0, ``where`` is the file's line or position. Only the file as a whole
    can fail the run: missing, unreadable, or without any record of ``kind``'s columns.

    Args:
        kind: ``sft`` (TRL conversational ``messages``) or ``dpo`` (TRL preference
            ``prompt``/``chosen``/``rejected``, message lists or plain strings).
        path: A data file or the run directory of the producing stage.
        limit: Keep at most this many valid rows (in file order).
    """
    if kind not in COLUMNS:
        raise ConfigError(f"unknown training kind {kind!r}; expected one of {sorted(COLUMNS)}")
    src = resolve_path(kind, path)
    if storage.is_uri(src):  # read from a local copy (the file's own reader, its rejects)
        with tempfile.TemporaryDirectory(prefix="moaa-train-data-") as tmp:
            records = _read(storage.fetch(src, Path(tmp)))
    else:
        records = _read(src)
    objects = [rec for _, rec in records if isinstance(rec, dict)]
    # the wrong kind of file (SFT data given to DPO) is a configuration error; a single record
    # without the columns is only a reject
    if objects and not any(all(c in rec for c in COLUMNS[kind]) for rec in objects):
        missing = [c for c in COLUMNS[kind] if c not in objects[0]]
        raise ConfigError(
            f"{src}: {kind} data needs columns {list(COLUMNS[kind])}; missing {missing}"
        )
    make = _sft_row if kind == "sft" else _dpo_row
    rows, rejects = [], []
    for i, (where, rec) in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        try:
            if isinstance(rec, Reject):
                raise rec
            if not isinstance(rec, dict):
                raise Reject("record is not an object")
            rows.append(make(rec))
        except Exception as exc:  # a record can fail only itself
            raw = rec.record if isinstance(rec, Reject) else rec  # parsed, if it was
            rejects.append(
                {
                    "index": i,
                    "where": where,
                    "id": raw.get("id") if isinstance(raw, dict) else None,
                    "reason": str(exc) if isinstance(exc, Reject) else describe(exc),
                }
            )
    if not rows:
        raise ConfigError(f"{src}: no usable {kind} rows ({len(rejects)} rejected)")
    return rows, rejects


def write(rows: list[dict], path: Path | str) -> Path | str:
    """Writes the validated rows for the workers (atomic; local or object storage)."""
    storage.write_parquet(pa.Table.from_pylist(rows), path)
    return path
