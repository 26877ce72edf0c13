"""Labeled pairs for judge evaluation: what a record must be, and how it is read.

A record is a generic ``{prompt, chosen, rejected}`` (strings or message lists) or HH-RLHF's
``{chosen, rejected}`` dialogue strings. ``moaa judge-eval`` reads a pairs file (or a directory
or object-storage prefix of them) with Ray Data read tasks (:data:`PAIRS`, through
``pipeline.instructions.read_valid``): each record becomes one pair or one reject with its
reason, written by the task that read it; a pair seen again is a reject naming the first.
:func:`load_pairs` is the same rule read in one process (tests and small tools).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.input_stream import RecordKind
from moaa_cluster.data.records import Reject, describe
from moaa_cluster.data.sources import input_records
from moaa_cluster.pipeline.frame import MESSAGE

_HH_TURN = re.compile(r"\n\nHuman: |\n\nAssistant: ")


class BadPair(Reject):
    pass


def _hh_messages(text: object, what: str = "dialogue") -> list[dict]:
    if not isinstance(text, str):
        raise BadPair(f"{what} must be an HH-RLHF dialogue string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    roles = re.findall(r"\n\n(Human|Assistant): ", text)
    if parts[0].strip() or not roles:
        raise BadPair("not an HH-RLHF dialogue ('\\n\\nHuman: ... \\n\\nAssistant: ...')")
    return [
        {"role": "user" if r == "Human" else "assistant", "content": c.strip()}
        for r, c in zip(roles, parts[1:], strict=True)
    ]


def _as_messages(value: object, what: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise BadPair(f"{what} is empty")
        return [{"role": "user", "content": value}]
    # the prompt goes to the judges as chat messages (and into a Parquet column of strings)
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise BadPair(f"{what} must be a string or a list of {{role, content}} with text content")


def _answer(value: object, what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content")
        if isinstance(content, str) and content.strip():
            return content
    raise BadPair(f"{what} must be a non-empty string or message list")


def to_labeled_pair(rec: object) -> dict:
    """``{prompt: messages, chosen: str, rejected: str}`` from a generic or HH-RLHF record.

    Raises:
        BadPair: The record is neither shape, or a text is empty.
    """
    if not isinstance(rec, dict) or "chosen" not in rec or "rejected" not in rec:
        raise BadPair("record needs 'chosen' and 'rejected'")
    if "prompt" in rec:
        return {
            "prompt": _as_messages(rec["prompt"], "'prompt'"),
            "chosen": _answer(rec["chosen"], "'chosen'"),
            "rejected": _answer(rec["rejected"], "'rejected'"),
        }
    chosen = _hh_messages(rec["chosen"], "'chosen'")
    rejected = _hh_messages(rec["rejected"], "'rejected'")
    if (
        chosen[:-1] != rejected[:-1]
        or chosen[-1]["role"] != "assistant"
        or rejected[-1]["role"] != "assistant"
    ):
        raise BadPair(
            "chosen and rejected do not share the dialogue before the last assistant turn"
        )
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise BadPair("an empty final assistant answer")
    if not chosen[:-1]:
        raise BadPair("no dialogue before the answers")
    return {
        "prompt": chosen[:-1],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
    }


def pair_row(source: str, where: str, rec: object) -> dict:
    """A record as a pair with its id (raises :class:`BadPair` or the record's own reject).

    The id is a digest of the pair's content: a resumed run finds the pairs it judged."""
    if isinstance(rec, Reject):
        raise rec
    pair = to_labeled_pair(rec)
    pair["id"] = hashlib.sha256(json.dumps(pair, sort_keys=True).encode()).hexdigest()[:20]
    return pair


def pair_reject(source: str, where: str, rec: object, exc: BaseException) -> dict:
    """The reject of a record that is no pair: ``{where, stage, reason}``."""
    reason = str(exc) if isinstance(exc, Reject) else describe(exc)
    return {"where": where, "stage": "input", "reason": reason}


def _duplicate_pair(row: dict, first: str) -> dict:
    return pair_reject("", row["where"], None, Reject(f"duplicate of {first} (same pair)"))


def load_pairs(path: Path | str, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Reads labeled pairs in this process; returns ``(pairs, rejects)``.

    Any file :func:`moaa_cluster.data.records.read_records` reads (``.jsonl``, ``.jsonl.gz``,
    ``.json``, Parquet), local or on object storage (``s3://...``, its rejects naming the URI).
    Every record read before ``limit`` pairs are reached ends as exactly one pair or one reject
    ``{where, stage, reason}``; a record can fail only itself.

    Raises:
        ConfigError: An object-storage URI names no object.
    """
    pairs, rejects = [], []
    for where, rec in input_records(path, "labeled pairs"):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pair = pair_row("", where, rec)
        except Exception as exc:  # a record can fail only itself
            rejects.append(pair_reject("", where, rec, exc))
            continue
        pairs.append(pair)
    return pairs, rejects


INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
    ]
)
# a pair as the read tasks give it: where it was read and its read order
PAIR_ROWS = pa.schema(
    [*INPUT_SCHEMA, ("where", pa.string()), ("_unit", pa.int64()), ("_rec", pa.int64())]
)
PAIRS = RecordKind(pair_row, pair_reject, _duplicate_pair, PAIR_ROWS)
