"""Files of a run directory, each written so that a kill never leaves half of one.

A path may be local or an object-store URI (``runs.storage``): locally a file is written under
a hidden name and renamed, an object is one PUT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from moaa_cluster.runs import storage


def save_json(path: Path | str, data: dict) -> None:
    """Writes ``data`` as indented JSON, whole (temp file + rename, or one PUT)."""
    storage.write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def read_json(path: Path | str) -> dict | None:
    """The JSON object at ``path``, or None when it is missing or cannot be read."""
    raw = storage.read_bytes(path)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_parquet_atomic(table: pa.Table, path: Path | str) -> Path | str:
    """Writes ``path`` whole: a kill never leaves half a file."""
    storage.write_parquet(table, path)
    return path


def jsonable(value: object) -> object:
    """``value`` if JSON can hold it, else its ``repr`` (a rejected record is kept for reading)."""
    try:
        json.dumps(value)
        return value
    except Exception:  # TypeError for bytes and the like, RecursionError, ...
        try:
            return repr(value)
        except Exception as exc:
            return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"


def write_jsonl(path: Path | str, records) -> None:
    """Writes ``records`` as a JSONL file, whole (see :func:`jsonl_line`); the file exists
    afterwards even when there are none."""
    storage.write_bytes(path, b"".join(jsonl_line(r) for r in records))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Appends ``records``; the file exists afterwards even when there are none (a run's
    summary names its ``rejects.jsonl`` whether or not anything was rejected).

    Text is written as UTF-8. A record holding a lone surrogate (a rejected input keeps its
    raw record) is written with ``\\uXXXX`` escapes instead, which reads back to the same
    strings.
    """
    with open(path, "ab") as fh:
        for rec in records:
            fh.write(jsonl_line(rec))


def jsonl_line(rec: dict) -> bytes:
    """One record as a JSONL line, UTF-8 (see :func:`append_jsonl` for the fallbacks)."""
    try:
        line = json.dumps(rec, ensure_ascii=False, default=str)
    except Exception:  # a value JSON cannot encode (nested too deep, ...): its repr
        rec = {k: jsonable(v) for k, v in rec.items()}
        line = json.dumps(rec, ensure_ascii=False)
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \uXXXX escapes read back the same
        return (json.dumps(rec, default=str) + "\n").encode("utf-8")


def read_jsonl(path: Path | str) -> list[dict]:
    """The records of a JSONL file we wrote; an absent file has none."""
    raw = storage.read_bytes(path)
    if raw is None:
        return []
    # split on newlines only: a JSON string may hold U+2028 and the like, which splitlines cuts
    return [json.loads(line) for line in raw.split(b"\n") if line.strip()]


def check_writable(run_dir: Path | str) -> None:
    """Creates ``run_dir`` (local or object storage) and writes a probe there, or raises
    ``ConfigError`` saying why it cannot be written."""
    storage.check_writable(run_dir)
