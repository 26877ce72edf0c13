"""Reading a benchmark's JSONL files whole: any bad line stops the run, naming the line.

A benchmark is its exact question set, so unlike training data (where a bad record fails only
itself, see :mod:`moaa_cluster.data.records`) a question or reference file that does not read
completely is a :class:`~moaa_cluster.errors.ConfigError`: scoring on the questions that did
read would report a different benchmark under the same name.
"""

from __future__ import annotations

from pathlib import Path

from moaa_cluster.data.records import Reject, UnreadableFile, jsonl_records
from moaa_cluster.data.sources import input_records
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage


def read_jsonl(path: str | Path, what: str) -> list[tuple[str, dict]]:
    """Every record of a (gzipped) JSONL file, each a JSON object.

    Args:
        path: The file, local or on object storage (read from a local temporary copy).
        what: What the file holds, for error messages (e.g. ``"MT-Bench question file"``).

    Returns:
        ``(where, record)`` pairs in file order; ``where`` is ``"file.jsonl:LINE"`` (the URI
        in place of ``file.jsonl`` for an object).

    Raises:
        ConfigError: If the file cannot be read (or the object does not exist), holds no
            records, or any line is not a JSON object.
    """
    path = path if storage.is_uri(path) else Path(path)
    try:
        rows = list(input_records(path, what, jsonl_records))
    except UnreadableFile as exc:
        raise ConfigError(f"{what} {path}: {exc}") from exc
    out = []
    for where, record in rows:
        # an object's locations name its URI already
        at = f"{what} {where}" if storage.is_uri(path) else f"{what} {path}: {where}"
        if isinstance(record, Reject):
            raise ConfigError(f"{at}: {record}")
        if not isinstance(record, dict):
            raise ConfigError(f"{at}: expected a JSON object")
        out.append((where, record))
    if not out:
        raise ConfigError(f"{what} {path} holds no records")
    return out


def text_field(record: dict, key: str, where: str) -> str:
    """``record[key]``, which must be a string.

    Raises:
        ConfigError: If the key is missing or its value is not a string.
    """
    value = record.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def turns_field(value: object, where: str) -> tuple[str, ...]:
    """A non-empty list of strings (the ``turns`` of a question or an answer) as a tuple.

    Raises:
        ConfigError: If ``value`` is not a non-empty list of strings.
    """
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise ConfigError(f"{where}: 'turns' must be a non-empty list of strings")
    return tuple(value)


def unique(keys: list[tuple[str, object]], what: str) -> None:
    """Checks that no key occurs twice.

    Args:
        keys: ``(where, key)`` pairs.
        what: The file's description, for the error message.

    Raises:
        ConfigError: Naming the first repeated key and both places it occurs.
    """
    seen: dict[object, str] = {}
    for where, key in keys:
        if key in seen:
            raise ConfigError(f"{what}: id {key!r} occurs twice ({seen[key]}, {where})")
        seen[key] = where
