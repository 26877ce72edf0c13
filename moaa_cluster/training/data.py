"""Training data: read, validate and freeze the rows a training run learns from.

The driver validates once and writes ``train_data.parquet`` into the run directory; the Ray
Train workers read that file (on a multi-node cluster the run directory must be on shared
storage, as Ray Train's ``storage_path`` must be). Rows that cannot train go to
``rejects.jsonl`` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from moaa_cluster.engines.spec import ConfigError

# the file a stage run directory hands to the next stage
RUN_FILES = {"sft": "sft.parquet", "dpo": "prefs.parquet"}
COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}
ROLES = {"system", "user", "assistant"}


def resolve_path(kind: str, path: str | Path) -> Path:
    """A file, or a run directory of the stage that produces ``kind``'s data."""
    p = Path(path)
    if p.is_dir():
        if not (p / RUN_FILES[kind]).exists():
            raise ConfigError(
                f"{p} is a directory without {RUN_FILES[kind]}: give a "
                f"{'synth' if kind == 'sft' else 'prefs'} run directory or a data file"
            )
        return p / RUN_FILES[kind]
    if not p.exists():
        raise ConfigError(f"training data not found: {p}")
    return p


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json") or path.name.endswith(".jsonl.gz"):
        import gzip

        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            if path.suffix == ".json":
                data = json.load(f)
                return data if isinstance(data, list) else [data]
            return [json.loads(line) for line in f if line.strip()]
    raise ConfigError(f"{path}: training data must be .parquet, .jsonl(.gz) or .json")


def _check_messages(value: object, what: str, *, last_assistant: bool) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"{what}: every message needs a role in {sorted(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ValueError(f"{what}: a {m['role']} message has empty content")
        out.append({"role": m["role"], "content": m["content"]})
    if last_assistant and out[-1]["role"] != "assistant":
        raise ValueError(f"{what} must end with an assistant message")
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
        raise ValueError("prompt must end with a user message")
    if row["chosen"] == row["rejected"]:
        raise ValueError("chosen and rejected are identical")
    return row


def prepare(kind: str, path: str | Path, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Valid training rows and rejects (``{"index", "reason"}``) from ``path``.

    Args:
        kind: ``sft`` (TRL conversational ``messages``) or ``dpo`` (TRL preference
            ``prompt``/``chosen``/``rejected``, message lists or plain strings).
        path: A data file or the run directory of the producing stage.
        limit: Keep at most this many valid rows (in file order).
    """
    if kind not in COLUMNS:
        raise ConfigError(f"unknown training kind {kind!r}; expected one of {sorted(COLUMNS)}")
    src = resolve_path(kind, path)
    records = _read(src)
    missing = [c for c in COLUMNS[kind] if not records or c not in records[0]]
    if records and missing:
        raise ConfigError(
            f"{src}: {kind} data needs columns {list(COLUMNS[kind])}; missing {missing}"
        )
    make = _sft_row if kind == "sft" else _dpo_row
    rows, rejects = [], []
    for i, rec in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        try:
            if not isinstance(rec, dict):
                raise ValueError("record is not an object")
            rows.append(make(rec))
        except ValueError as exc:
            rejects.append(
                {
                    "index": i,
                    "id": (rec or {}).get("id") if isinstance(rec, dict) else None,
                    "reason": str(exc),
                }
            )
    if not rows:
        raise ConfigError(f"{src}: no usable {kind} rows ({len(rejects)} rejected)")
    return rows, rejects


def write(rows: list[dict], path: Path) -> Path:
    """Writes the validated rows for the workers (atomic)."""
    from moaa_cluster.pipeline.stage import write_parquet_atomic

    return write_parquet_atomic(pa.Table.from_pylist(rows), Path(path))
