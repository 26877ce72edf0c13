"""Files of a run directory, each written so that a kill never leaves half of one."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moaa_cluster.errors import ConfigError


def save_json(path: Path, data: dict) -> None:
    """Writes ``data`` as indented JSON via a temp file + rename."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.rename(path)


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``, or None when it is missing or cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Writes ``path`` via a hidden temp file + rename: a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)
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


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file we wrote; an absent file has none."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def check_writable(run_dir: Path) -> None:
    """Creates ``run_dir`` or raises ``ConfigError`` saying why it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {run_dir} is not writable: {exc.strerror}") from exc
