"""The one reader of record files: every task that reads records (instructions, baseline
answers, labeled judge pairs, training data) goes through :func:`read_records`.

It yields ``(where, record)`` pairs, where ``where`` names the record (``file.jsonl:12`` for a
line, ``file.parquet[3]`` for an index) and ``record`` is the parsed value or a
:class:`Reject` saying why that one record could not be read. A bad record can fail only
itself: decoding, parsing and checking problems of one record become its ``Reject``; only a
file that cannot be opened at all raises (:class:`UnreadableFile`, naming the file).

Formats, chosen by the path:

* a directory: a ``datasets.save_to_disk`` dataset (a ``DatasetDict`` is read at ``split``);
* ``.parquet``: rows in file order; a value Arrow cannot turn into Python (invalid UTF-8 in a
  string column) rejects its row only;
* ``.json`` / ``.json.gz``: a list of records or one record. A file that does not parse is one
  reject for the whole file; a file of one JSON object per line is read as JSONL;
* anything else (``.jsonl``, ``.jsonl.gz``): JSON Lines, read as bytes line by line. A UTF-8
  byte-order mark is dropped at the start of the file and of any line (files concatenated with
  ``cat`` carry one per part); CRLF line ends are fine; blank lines are not records; a line
  that is not UTF-8 or not JSON is a reject with the byte or column.

Rules every parsed record is checked against (:func:`check_record`):

* **Text that UTF-8 cannot encode rejects the record.** JSON may spell a lone UTF-16
  surrogate (``"\\ud800"``); Python parses it into a string that no later step can write
  (hashing, Parquet, JSONL, tokenizers). Such a record is rejected, not repaired, with the
  field and character position in the reason, e.g. ``unencodable text (lone surrogate U+D800)
  in turns[0] at char 65``: a silent U+FFFD would change the text a model trains on, and
  scraped records with broken surrogate pairs are usually broken elsewhere too. The whole
  record is checked, keys included, so whatever is accepted can be written anywhere.
* **Nesting deeper than** :data:`MAX_DEPTH` **rejects the record**: no chat record is that
  deep, and recursive steps downstream (JSON encoding, Arrow conversion) must not hit
  Python's recursion limit. JSON nested too deeply for the parser itself is rejected too.
* NUL and other control characters are kept: they are valid UTF-8, and tokenizers, Parquet
  and JSONL all carry them.

This module imports nothing heavy at import time (``pyarrow`` and ``datasets`` are imported
by the functions that read those formats) and nothing from the pipeline, training or
evaluation packages, which all import it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

MAX_DEPTH = 100  # containers nested inside one record
BOM = b"\xef\xbb\xbf"
_BATCH = 1024  # rows converted from Arrow to Python at a time
_SHOWN = 300  # characters of an exception message kept in a reason
BLANK = object()  # parse_json_line's answer for a blank line (JSON ``null`` is a record)


class Reject(ValueError):
    """A record that cannot be used, with the reason recorded in ``rejects``.

    Attributes:
        record: The parsed record when it was parsed but failed :func:`check_record`
            (kept for the ``rejects`` file), else ``None``.
    """

    def __init__(self, reason: str, record: object = None) -> None:
        super().__init__(reason)
        self.record = record


class UnreadableFile(ValueError):
    """A whole file that cannot be opened or read; the message names the file."""


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` made writable as UTF-8 (lone surrogates become ``\\udXXX`` escapes).

    Args:
        text: Any string, e.g. an exception message quoting a record.
        limit: Keep at most this many characters (an ellipsis marks the cut).
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(exc: BaseException) -> str:
    """A reject reason for an unexpected exception: its type and (shortened) message."""
    return safe_text(f"{type(exc).__name__}: {exc}", _SHOWN)


def _key_path(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    shown = json.dumps(key, ensure_ascii=True) if isinstance(key, str) else repr(key)
    return f"{path}[{safe_text(shown, 40)}]"


def _check_str(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # str -> UTF-8 fails only on surrogate code points
        raise Reject(
            f"unencodable text (lone surrogate U+{ord(text[exc.start]):04X}) in "
            f"{where or 'the record'} at char {exc.start}"
        ) from None


def check_record(record: object, max_depth: int = MAX_DEPTH) -> None:
    """Checks that every string of ``record`` (keys too) encodes as UTF-8 and that it nests
    at most ``max_depth`` containers deep.

    Iterative, so a record of any depth is checked without recursion.

    Raises:
        Reject: The first offending string (with its path, e.g. ``messages[1].content``, and
            the character position) or the first container nested too deep.
    """
    stack: list[tuple[object, str, int]] = [(record, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_str(value, path)
            continue
        if isinstance(value, dict):
            children = []
            for key, item in value.items():
                if isinstance(key, str):
                    _check_str(key, f"a key of {path or 'the record'}")
                children.append((item, _key_path(path, key)))
        elif isinstance(value, (list, tuple)):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(value)]
        else:
            continue
        if depth + 1 > max_depth:
            raise Reject(
                f"record nests more than {max_depth} levels deep (at {path or 'the top level'})"
            )
        # reversed: the first offending value in document order is the one reported
        stack.extend((item, where, depth + 1) for item, where in reversed(children))


def checked(record: object) -> object:
    """``record`` itself if it passes :func:`check_record`, else its :class:`Reject`."""
    try:
        check_record(record)
    except Reject as exc:
        return Reject(str(exc), record)
    return record


def parse_json_line(raw: bytes) -> object:
    """One JSONL line -> the checked record, a :class:`Reject`, or :data:`BLANK`."""
    skipped = 0
    if raw.startswith(BOM):
        raw, skipped = raw[len(BOM) :], len(BOM)
    if not raw.strip():
        return BLANK
    try:
        # without the line end, a line cut short is reported at its last column
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return Reject(f"invalid UTF-8 at byte {exc.start + skipped}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return Reject(f"malformed JSON: {exc.msg} (column {exc.colno})")
    except RecursionError as exc:
        return Reject(f"malformed JSON: nested too deeply to parse ({describe(exc)})")
    except Exception as exc:  # e.g. ValueError: an integer of more than 4300 digits
        return Reject(f"unreadable JSON ({describe(exc)})")
    return checked(record)


def _open(path: Path, mode: str = "rb"):
    return gzip.open(path, mode) if path.name.endswith(".gz") else open(path, mode)


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for every non-blank line of a (gzipped) JSONL file."""
    lineno = 0
    try:
        with _open(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                record = parse_json_line(raw)
                if record is not BLANK:
                    yield f"{path.name}:{lineno}", record
    except Exception as exc:  # truncated or corrupt gzip (EOFError, zlib.error), I/O error
        if lineno == 0:
            raise UnreadableFile(f"cannot read {path}: {describe(exc)}") from exc
        yield (
            f"{path.name}:{lineno + 1}",
            Reject(f"file unreadable after line {lineno} ({describe(exc)})"),
        )


def json_records(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for a (gzipped) JSON file: a list or a single record."""
    try:
        with _open(path) as fh:
            data = fh.read()
    except Exception as exc:
        raise UnreadableFile(f"cannot read {path}: {describe(exc)}") from exc
    skipped = len(BOM) if data.startswith(BOM) else 0
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        yield path.name, Reject(f"invalid UTF-8 at byte {exc.start + skipped}")
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        first = next((line for line in data.splitlines() if line.strip()), b"")
        if exc.msg == "Extra data" and isinstance(parse_json_line(first), dict):
            # JSON Lines in a file named .json (common; `datasets` reads them the same way)
            yield from jsonl_records(path)
            return
        yield path.name, Reject(f"malformed JSON: {exc.msg} (line {exc.lineno} column {exc.colno})")
        return
    except RecursionError as exc:
        yield path.name, Reject(f"malformed JSON: nested too deeply to parse ({describe(exc)})")
        return
    except Exception as exc:
        yield path.name, Reject(f"unreadable JSON ({describe(exc)})")
        return
    for i, record in enumerate(doc if isinstance(doc, list) else [doc]):
        yield f"{path.name}[{i}]", checked(record)


def _batch_rows(batch, name: str, start: int) -> Iterator[tuple[str, object]]:
    """Rows of one Arrow record batch; a row Arrow cannot convert rejects only itself."""
    try:
        rows = batch.to_pylist()
    except Exception:
        rows = None
    for j in range(batch.num_rows):
        if rows is not None:
            record = checked(rows[j])
        else:
            try:
                record = checked(batch.slice(j, 1).to_pylist()[0])
            except Exception as exc:  # invalid UTF-8 in a string column, ...
                record = Reject(f"unreadable value ({describe(exc)})")
        yield f"{name}[{start + j}]", record


def parquet_records(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for every row of a Parquet file, in file order.

    Raises:
        UnreadableFile: The file is not Parquet or a row group cannot be read.
    """
    import pyarrow.parquet as pq

    start = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_BATCH)
        for batch in batches:
            yield from _batch_rows(batch, path.name, start)
            start += batch.num_rows
    except Exception as exc:
        raise UnreadableFile(f"cannot read Parquet file {path}: {describe(exc)}") from exc


def dataset_records(ds, name: str) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for every row of a ``datasets.Dataset``."""
    n = len(ds)
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        try:
            columns = ds[start:stop]
            rows = [{k: v[j] for k, v in columns.items()} for j in range(stop - start)]
        except Exception:
            rows = None
        for i in range(start, stop):
            if rows is not None:
                record = checked(rows[i - start])
            else:
                try:
                    record = checked(ds[i])
                except Exception as exc:
                    record = Reject(f"unreadable value ({describe(exc)})")
            yield f"{name}[{i}]", record


def saved_dataset_records(path: Path, split: str = "train") -> Iterator[tuple[str, object]]:
    """Rows of a ``datasets.save_to_disk`` directory (a ``DatasetDict`` is read at ``split``)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UnreadableFile(f"cannot read dataset directory {path}: {describe(exc)}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UnreadableFile(f"{path} has no split {split!r}; it has {sorted(ds)}")
        ds = ds[split]
    yield from dataset_records(ds, path.name)


def read_records(path: str | Path, split: str = "train") -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for every record of ``path``, in file order.

    Args:
        path: A JSONL (optionally gzipped), JSON or Parquet file, or a
            ``datasets.save_to_disk`` directory.
        split: The split to read when the directory holds a ``DatasetDict``.

    Raises:
        UnreadableFile: The file as a whole cannot be read (not Parquet, not gzip, ...).
    """
    path = Path(path)
    if path.is_dir():
        yield from saved_dataset_records(path, split)
    elif path.suffix == ".parquet":
        yield from parquet_records(path)
    elif path.name.endswith((".json", ".json.gz")):
        yield from json_records(path)
    else:
        yield from jsonl_records(path)
