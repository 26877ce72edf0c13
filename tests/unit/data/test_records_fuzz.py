"""Fuzz tests of every record reader (issue #13: no input record can crash a run).

Generated JSONL, JSON and Parquet inputs mix valid records of every supported shape with
random JSON values, random bytes and Unicode, lone surrogates, deep nesting, huge fields,
blank lines, byte-order marks, CRLF and duplicates. The invariants, for instructions
(``load_rows``), training data (``prepare``), baseline answers (``load_baseline``) and
labeled judge pairs (``load_pairs``):

* no exception escapes (only a file-level configuration error, where documented);
* every record ends as exactly one row or one reject (blank lines are not records);
* every generated valid record becomes a row with the expected text (or a duplicate reject),
  every record that must fail is a reject with the expected kind of reason;
* whatever is accepted survives every later step that touches text: tokenizing with the
  packaged SmolLM2 tokenizer, id hashing, Parquet writing with the stage's schema and reading
  back, JSONL writing and reading back; the rejects too are writable as JSONL.

Profiles: ``default`` (bounded, seconds) and ``ci-long`` (``HYPOTHESIS_PROFILE=ci-long``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moaa_cluster.data.adapters import Conversation, stable_id
from moaa_cluster.data.records import MAX_DEPTH, Reject, UnreadableFile, check_record, read_records
from moaa_cluster.data.sources import Source, load_rows
from moaa_cluster.models.store import default_models_dir
from moaa_cluster.pipeline.synth import INPUT_SCHEMA
from moaa_cluster.runs.files import append_jsonl, read_jsonl

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
# no example database: it would write .hypothesis/ into the working tree
settings.register_profile(
    "default", max_examples=60, deadline=None, database=None, suppress_health_check=_SLOW_OK
)
settings.register_profile(
    "ci-long", max_examples=250, deadline=None, database=None, suppress_health_check=_SLOW_OK
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

BOM = b"\xef\xbb\xbf"
MODEL = default_models_dir() / "smollm2-135m-instruct"


@functools.cache
def _tokenizer():
    """The packaged SmolLM2 tokenizer, or None when the model was not prepared."""
    if not (MODEL / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL))


def _tokenizes(texts: list[str], messages: list[dict] | None = None) -> None:
    tok = _tokenizer()
    if tok is None:  # the pure steps below still run
        return
    for text in texts:
        assert isinstance(tok(text).input_ids, list)
    if messages:
        tok.apply_chat_template(messages, tokenize=True)


def _same_json(a: object, b: object) -> bool:
    # NaN != NaN, so compare the JSON texts
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- text strategies

SPECIALS = [
    "\x00",  # NUL: kept, tokenizers and Parquet carry it
    "\x01",
    "\x1b[31m",  # terminal escape
    "\x7f",
    "\u0301",  # combining acute
    "e\u0301\u0327",  # stacked combining marks
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u2028",  # line separator
    "\ufeff",  # BOM inside the text
    "\ufffd",
    "😀",
    "👩\u200d👩\u200d👧",  # ZWJ sequence
    "\U0010ffff",
    "\r\n",
    "\t",
    '"\\',
    "مرحبا",
    "日本語",
]
_letters = st.sampled_from(["a", "Z", "é", "中", "😀", "ب"])
_bits = st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=10)), max_size=5)
text = _bits.map("".join)
# never blank: readers reject whitespace-only text
words = st.builds(lambda a, b, c: a + b + c, text, _letters, text)
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
tainted_words = st.builds(lambda a, s, b: a + s + b, words, surrogate, words)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def contents(draw, word=words):
    """A message content: a string or an OpenAI list of text parts; with its expected text."""
    if draw(st.booleans()):
        t = draw(word)
        return t, t
    parts = draw(st.lists(word, min_size=1, max_size=3))
    return [{"type": "text", "text": p} for p in parts], "\n".join(parts)


@st.composite
def chats(draw, word=words):
    """Alternating user/assistant messages (optional leading system) and what they mean."""
    n = draw(st.integers(1, 3))
    messages, turns, answers, system = [], [], [], None
    if draw(st.booleans()):
        content, system = draw(contents(word))
        messages.append({"role": "system", "content": content})
    for i in range(n):
        content, t = draw(contents(word))
        messages.append({"role": "user", "content": content})
        turns.append(t)
        if i < n - 1 or draw(st.booleans()):
            content, a = draw(contents(word))
            messages.append({"role": "assistant", "content": content})
            answers.append(a)
    return messages, turns, system, answers


SHAREGPT_NAMES = {"user": ["human", "user", "Human"], "assistant": ["gpt", "assistant", "chatgpt"]}
SHAREGPT_NAMES["system"] = ["system"]


@st.composite
def instruction_records(draw, word=words):
    """One valid instruction record of any supported shape: ``(record, turns, system)``."""
    shape = draw(
        st.sampled_from(
            ["turns", "messages", "data", "instruction", "prompt", "trl", "sharegpt", "sg_role"]
        )
    )
    system = None
    if shape == "turns":
        turns = draw(st.lists(word, min_size=1, max_size=3))
        record = {"turns": turns}
        if draw(st.booleans()):
            system = draw(word)
            record["system"] = system
    elif shape == "data":
        data = draw(st.lists(word, min_size=1, max_size=5))
        record, turns = {"data": data}, data[::2]
    elif shape in ("instruction", "prompt"):
        t = draw(word)
        record, turns = {shape: t}, [t]
    else:
        messages, turns, system, _ = draw(chats(word))
        if shape == "messages":
            record = {"messages": messages}
        elif shape == "trl":
            record = {"prompt": messages}
        elif shape == "sg_role":
            record = {"conversations": messages}
        else:
            record = {
                "conversations": [
                    {
                        "from": draw(st.sampled_from(SHAREGPT_NAMES[m["role"]])),
                        "value": m["content"],
                    }
                    for m in messages
                ]
            }
    if draw(st.booleans()):
        record["id"] = draw(st.one_of(word, st.integers()))
    if draw(st.booleans()):
        record["meta_x"] = draw(json_values)
    return record, turns, system


def _mutate(draw, record: dict) -> dict:
    """A copy of ``record`` with one value somewhere replaced, dropped, wrapped or emptied."""
    record = copy.deepcopy(record)
    slots, stack = [], [record]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            pairs = list(container.items())
        elif isinstance(container, list):
            pairs = list(enumerate(container))
        else:
            continue
        for key, value in pairs:
            slots.append((container, key))
            stack.append(value)
    container, key = slots[draw(st.integers(0, len(slots) - 1))]
    how = draw(st.sampled_from(["replace", "drop", "wrap", "empty"]))
    if how == "drop":
        del container[key]
    elif how == "wrap":
        container[key] = [container[key]]
    elif how == "empty":
        value = container[key]
        container[key] = type(value)() if isinstance(value, (str, list, dict)) else None
    else:
        container[key] = draw(json_values)
    return record


def _line(obj: object, ascii_only: bool) -> bytes:
    """A JSONL line body; non-ASCII output keeps lone surrogates as (invalid) bytes."""
    if ascii_only:
        return json.dumps(obj).encode()
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def jsonl_items(draw, valid):
    """One line of a fuzzed JSONL file: ``(kind, bytes, expected)``.

    ``valid`` draws ``(record, expected)`` for a record the reader must accept.
    """
    kind = draw(
        st.sampled_from(
            ["valid"] * 4
            + ["mutant"] * 3
            + ["tainted"] * 2
            + ["json", "bytes", "utext", "deep", "bigint", "blank", "dup", "huge"]
        )
    )
    ascii_only = draw(st.booleans())
    if kind == "valid":
        record, expected = draw(valid)
        return kind, _line(record, ascii_only), expected
    if kind == "mutant":  # nearly valid: one value replaced, dropped, wrapped or emptied
        record, _ = draw(valid)
        return kind, _line(_mutate(draw, record), ascii_only), None
    if kind == "tainted":  # a valid shape with a lone surrogate somewhere
        record = draw(
            st.one_of(
                st.fixed_dictionaries({"turns": st.lists(tainted_words, min_size=1)}),
                st.fixed_dictionaries({"prompt": tainted_words, "chosen": words}),
                st.builds(lambda k, v: {"instruction": "q", "meta": {k: v}}, tainted_words, text),
            )
        )
        return kind, _line(record, ascii_only), record
    if kind == "json":
        return kind, _line(draw(json_values), ascii_only), None
    if kind == "bytes":  # "?" keeps it non-blank and never JSON
        return kind, draw(st.binary(max_size=40)).replace(b"\n", b"") + b"?", None
    if kind == "utext":  # any code point, surrogates included, never JSON
        raw = draw(st.text(st.characters(codec=None, categories=None), max_size=20))
        return kind, raw.replace("\n", "").encode("utf-8", "surrogatepass") + b"?", None
    if kind == "deep":
        depth = draw(st.sampled_from([1, 50, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 500, 5000]))
        body = b'{"turns": ["deep %d"], "prompt": "p", "messages": "m", "meta": %s%s}' % (
            depth,
            b"[" * depth,
            b"]" * depth,
        )
        return kind, body, depth
    if kind == "bigint":
        return kind, b'{"turns": ["n"], "n": ' + b"7" * 5000 + b"}", None
    if kind == "huge":
        n = draw(st.sampled_from([10_000, 100_000]))
        return kind, _line({"turns": [draw(words) + "x" * n]}, ascii_only), n
    if kind == "blank":
        return kind, draw(st.sampled_from([b"", b"   ", b"\t", b"\r", BOM, BOM + b" "])), None
    return "dup", b"", None  # filled in by the file builder


@st.composite
def jsonl_files(draw, valid, max_lines=12):
    """``(file bytes, items)``: items are ``(kind, expected, record_no or None)``."""
    items = draw(st.lists(jsonl_items(valid), min_size=1, max_size=max_lines))
    out, meta, bodies, record_no = [], [], [], 0
    for kind, body, expected in items:
        if kind == "dup":
            if not bodies:
                continue
            body = bodies[draw(st.integers(0, len(bodies) - 1))]
        elif kind != "blank":
            bodies.append(body)
        bom = draw(st.booleans()) and kind != "blank"
        eol = draw(st.sampled_from([b"\n", b"\r\n"]))
        out.append((BOM if bom else b"") + body + eol)
        meta.append((kind, expected, None if kind == "blank" else record_no))
        record_no += kind != "blank"
    data = b"".join(out)
    if draw(st.booleans()) and data.endswith(b"\n"):  # no newline at the end of the file
        data = data.rstrip(b"\r\n")
    return data, meta


def _split_outcomes(meta, rejects, line_of):
    """``{record_no: reject}`` and the record numbers of the rows, in order."""
    by_line = {line_of(r["where"]): r for r in rejects}
    assert len(by_line) == len(rejects), "one reject per record"
    lines = [i + 1 for i, (kind, _, _) in enumerate(meta) if kind != "blank"]
    rejected = {i: by_line[i] for i in lines if i in by_line}
    assert set(by_line) <= set(lines), "rejects name record lines only"
    accepted = [i for i in lines if i not in by_line]
    return rejected, accepted


def _jsonl_line(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


def _roundtrip_jsonl(tmp: Path, records: list[dict]) -> None:
    path = tmp / "out.jsonl"
    path.unlink(missing_ok=True)
    append_jsonl(path, records)
    back = read_jsonl(path)
    assert len(back) == len(records)
    assert all(_same_json(a, b) for a, b in zip(back, records, strict=True))


# --------------------------------------------------------------------------- instructions


@st.composite
def _valid_instruction(draw):
    record, turns, system = draw(instruction_records())
    return record, (turns, system)


def _check_instruction_rows(rows: list[dict], tmp: Path) -> None:
    """Every later text step on the accepted rows: hashing, Parquet, JSONL, tokenizing."""
    for row in rows:
        assert row["turns"] and all(isinstance(t, str) and t.strip() for t in row["turns"])
        assert row["system"] is None or (isinstance(row["system"], str) and row["system"].strip())
        conv = Conversation(
            turns=tuple(row["turns"]), system=row["system"], answers=tuple(row["answers"])
        )
        assert stable_id(row["source"], conv) == row["id"]
        msgs = ([{"role": "system", "content": row["system"]}] if row["system"] else []) + [
            {"role": "user", "content": t} for t in row["turns"]
        ]
        _tokenizes(row["turns"] + ([row["system"]] if row["system"] else []), msgs)
    table = pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)
    pq.write_table(table, tmp / "rows.parquet")
    back = pq.read_table(tmp / "rows.parquet").to_pylist()
    assert back == [{k: r[k] for k in INPUT_SCHEMA.names} for r in rows]
    _roundtrip_jsonl(tmp, rows)


@given(
    jsonl_files(_valid_instruction()),
    st.integers(0, 14),
    st.integers(0, 14),
    st.one_of(st.none(), st.integers(0, 99)),
)
def test_load_rows_jsonl_fuzz(tmp_path_factory, file, limit, src_limit, seed):
    data, meta = file
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "in.jsonl"
    path.write_bytes(data)
    n = sum(kind != "blank" for kind, _, _ in meta)

    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert len(rows) + len(rejects) == n, "every record is one row or one reject"
    rejected, accepted = _split_outcomes(meta, rejects, _jsonl_line)
    assert len(accepted) == len(rows)
    row_at = dict(zip(accepted, rows, strict=True))
    for line, (kind, expected, _) in enumerate(meta, start=1):
        rej = rejected.get(line)
        reason = rej["reason"] if rej else ""
        if kind in ("valid", "huge") or (kind == "deep" and expected + 1 <= MAX_DEPTH):
            assert rej is None or reason.startswith("duplicate of"), reason
            if rej is None and kind == "valid":
                turns, system = expected
                assert row_at[line]["turns"] == turns and row_at[line]["system"] == system
        elif kind == "tainted":
            assert "lone surrogate" in reason or "invalid UTF-8" in reason, reason
        elif kind == "deep":
            assert "levels deep" in reason or "nested too deeply" in reason, reason
        elif kind in ("bytes", "utext", "bigint", "dup"):
            assert rej is not None
    assert len({r["id"] for r in rows}) == len(rows)
    _check_instruction_rows(rows, tmp)
    _roundtrip_jsonl(tmp, rejects)

    # the global limit drops valid records past it; rejects do not depend on it
    rows_l, rejects_l = load_rows([Source(name="s", path=str(path))], limit=limit)
    assert rows_l == rows[:limit] and rejects_l == rejects
    # a source's limit keeps its first records (or a seeded sample): each one row or reject
    head = Source(name="s", path=str(path), limit=src_limit, sample_seed=seed)
    rows_h, rejects_h = load_rows([head])
    assert len(rows_h) + len(rejects_h) == min(src_limit, n)
    if seed is None:
        first = {i + 1 for i, (k, _, no) in enumerate(meta) if no is not None and no < src_limit}
        assert rejects_h == [r for r in rejects if _jsonl_line(r["where"]) in first]
        assert rows_h == [r for line, r in row_at.items() if line in first]


@given(
    st.lists(
        st.one_of(
            _valid_instruction().map(lambda v: ("valid", v[0], v[1])),
            json_values.map(lambda v: ("json", v, None)),
            st.fixed_dictionaries({"turns": st.lists(tainted_words, min_size=1)}).map(
                lambda v: ("tainted", v, None)
            ),
        ),
        max_size=10,
    ),
    st.booleans(),
    st.sampled_from(["ok", "truncated", "deep", "jsonl"]),
)
def test_load_rows_json_file_fuzz(tmp_path_factory, items, bom, damage):
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "in.json"
    records = [rec for _, rec, _ in items]
    body = json.dumps(records).encode()  # ASCII: lone surrogates as \udXXX escapes
    if damage == "truncated":
        body = body[: len(body) // 2]
    elif damage == "deep":
        body = b"[" * 3000 + body + b"]" * 3000
    elif damage == "jsonl":  # JSON Lines in a file named .json
        body = b"\n".join(json.dumps(r).encode() for r in [{"prompt": "first"}, *records])
    path.write_bytes((BOM if bom else b"") + body)

    rows, rejects = load_rows([Source(name="s", path=str(path))])
    _roundtrip_jsonl(tmp, rejects)
    if damage in ("truncated", "deep"):  # the file does not parse: one reject for it
        assert rows == [] and len(rejects) == 1 and rejects[0]["where"] == "in.json"
        assert "malformed JSON" in rejects[0]["reason"]
        return
    lines = damage == "jsonl" and bool(items)  # a single line parses as one JSON document
    total = len(items) + (damage == "jsonl")
    wheres = [f"in.json:{j + 1}" if lines else f"in.json[{j}]" for j in range(total)]
    assert len(rows) + len(rejects) == total
    by_where = {r["where"]: r["reason"] for r in rejects}
    assert set(by_where) <= set(wheres)
    row_at = dict(zip([w for w in wheres if w not in by_where], rows, strict=True))
    for i, (kind, _, expected) in enumerate(items):
        where = wheres[i + (damage == "jsonl")]
        if kind == "tainted":
            assert "lone surrogate" in by_where[where]
        elif kind == "valid" and where in by_where:
            assert by_where[where].startswith("duplicate of"), by_where[where]
        elif kind == "valid":
            assert (row_at[where]["turns"], row_at[where]["system"]) == expected
    _check_instruction_rows(rows, tmp)


_PARQUET_SHAPES = {
    "prompt": pa.schema([("prompt", pa.string()), ("uid", pa.string())]),
    "turns": pa.schema([("turns", pa.list_(pa.string())), ("system", pa.string())]),
    "messages": pa.schema(
        [("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]
    ),
}


@st.composite
def parquet_rows(draw, shape):
    """``(record, kind)`` rows of one Parquet shape; ``bad_utf8`` rows are otherwise valid."""
    kind = draw(st.sampled_from(["valid", "valid", "null", "blank", "bad_utf8"]))
    value = {"null": None, "blank": " \t"}.get(kind, draw(words))
    if shape == "prompt":
        return {"prompt": value, "uid": draw(st.one_of(st.none(), text))}, kind
    if shape == "turns":
        return {"turns": None if value is None else [value], "system": None}, kind
    return {"messages": None if value is None else [{"role": "user", "content": value}]}, kind


@given(st.data(), st.sampled_from(sorted(_PARQUET_SHAPES)))
def test_load_rows_parquet_fuzz(tmp_path_factory, data, shape):
    tmp = tmp_path_factory.mktemp("fz")
    items = data.draw(st.lists(parquet_rows(shape), min_size=1, max_size=12))
    table = pa.Table.from_pylist([rec for rec, _ in items], schema=_PARQUET_SHAPES[shape])
    # invalid UTF-8 in a string column (written as binary, viewed as string): Arrow's
    # writers accept it, Python cannot decode it
    note = [b"\xff\xfe\xed\xa0\x80" if kind == "bad_utf8" else None for _, kind in items]
    table = table.append_column("note", pa.array(note, pa.binary()).view(pa.string()))
    path = tmp / "in.parquet"
    pq.write_table(table, path)

    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert len(rows) + len(rejects) == len(items)
    by_where = {r["where"]: r["reason"] for r in rejects}
    for i, (_, kind) in enumerate(items):
        reason = by_where.get(f"in.parquet[{i}]")
        if kind == "bad_utf8":
            assert reason and "UnicodeDecodeError" in reason, reason
        elif kind == "valid":
            assert reason is None or reason.startswith("duplicate of"), reason
        else:
            assert reason is not None
    _check_instruction_rows(rows, tmp)
    _roundtrip_jsonl(tmp, rejects)


# --------------------------------------------------------------------------- training data


@st.composite
def _valid_training(draw, kind="sft"):
    """A valid TRL record: string contents (training reads no content-part lists)."""
    n = draw(st.integers(1, 3))
    plain = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    for i in range(n):
        plain.append({"role": "user", "content": draw(words)})
        if i < n - 1 or draw(st.booleans()):
            plain.append({"role": "assistant", "content": draw(words)})
    if kind == "sft":
        if plain[-1]["role"] != "assistant":
            plain.append({"role": "assistant", "content": draw(words)})
        return {"messages": plain}, plain
    if plain[-1]["role"] != "user":
        plain = plain[:-1]
    a, b = draw(words), draw(words)
    if a == b:
        b = a + "!"
    return {"prompt": plain, "chosen": a, "rejected": b}, plain


@given(st.data(), st.sampled_from(["sft", "dpo"]), st.one_of(st.none(), st.integers(1, 10)))
def test_training_prepare_fuzz(tmp_path_factory, data, kind, limit):
    from moaa_cluster.errors import ConfigError
    from moaa_cluster.training import data as train_data

    tmp = tmp_path_factory.mktemp("fz")
    raw, meta = data.draw(jsonl_files(_valid_training(kind)))
    path = tmp / "train.jsonl"
    path.write_bytes(raw)
    n = sum(k != "blank" for k, _, _ in meta)
    n_valid = sum(k == "valid" for k, _, _ in meta)
    try:
        rows, rejects = train_data.prepare(kind, path)
    except ConfigError as exc:
        # only a file-level problem: no record of this kind at all, or none usable
        assert n_valid == 0, exc
        return
    assert len(rows) + len(rejects) == n
    rejected, accepted = _split_outcomes(meta, rejects, _jsonl_line)
    assert [r["index"] for r in rejects] == sorted(r["index"] for r in rejects)
    for line, (k, _, record_no) in enumerate(meta, start=1):
        if line in rejected:
            assert rejected[line]["index"] == record_no and rejected[line]["reason"]
        if k in ("tainted", "bytes", "utext", "bigint"):
            assert line in rejected
        if k == "valid":
            assert line in accepted
    _roundtrip_jsonl(tmp, rejects)
    train_data.write(rows, tmp / "train_data.parquet")
    assert pq.read_table(tmp / "train_data.parquet").to_pylist() == rows
    for row in rows:
        chat = row["messages"] if kind == "sft" else row["prompt"] + row["chosen"]
        assert all(m["role"] in ("system", "user", "assistant") for m in chat)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in chat)
        _tokenizes([m["content"] for m in chat], chat)

    if limit is not None and rows:
        rows_l, rejects_l = train_data.prepare(kind, path, limit)
        assert rows_l == rows[:limit]
        # records are read up to the limit-th row: the rejects before it are the same
        stop = accepted[limit - 1] if limit <= len(accepted) else None
        assert rejects_l == [r for r in rejects if stop is None or _jsonl_line(r["where"]) < stop]


# --------------------------------------------------------------------------- baseline answers


@st.composite
def _valid_answer(draw):
    qid = draw(st.one_of(st.integers(0, 5), words))
    answer = draw(words)
    shape = draw(st.sampled_from(["fastchat", "arena", "alpaca", "plain", "plain_list", "sample"]))
    if shape == "fastchat":
        return {"question_id": qid, "choices": [{"turns": [answer]}]}, answer
    if shape == "arena":
        return {
            "uid": qid,
            "messages": [
                {"role": "user", "content": draw(words)},
                {"role": "assistant", "content": {"answer": answer}},
            ],
        }, answer
    if shape == "alpaca":
        return {"instruction": draw(words), "output": answer}, answer
    if shape == "sample":
        return {
            "source_id": qid,
            "prompt": [{"role": "user", "content": draw(words)}],
            "candidates": [answer],
        }, answer
    if shape == "plain_list":
        return {"id": qid, "answers": [answer]}, answer
    return {"id": qid, "answer": answer}, answer


@given(jsonl_files(_valid_answer()))
def test_load_baseline_fuzz(tmp_path_factory, file):
    from moaa_cluster.evaluation.answers import load_baseline, parse_answer_record

    data, meta = file
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "answers.jsonl"
    path.write_bytes(data)
    index, rejects = load_baseline(path)
    rejected, accepted = _split_outcomes(meta, rejects, _jsonl_line)
    records = dict(read_records(path))
    for line in accepted:
        # accepted: parsed, and findable in the index with its own answers
        ans = parse_answer_record(records[f"answers.jsonl:{line}"], "x")
        if ans.question_id is not None:
            assert index.by_id[ans.question_id].answers == ans.answers
        else:
            assert ans.question.strip() in index.by_text
    for line, (kind, _, _) in enumerate(meta, start=1):
        if kind in ("tainted", "bytes", "utext", "bigint"):
            assert line in rejected
        if kind == "valid":
            assert line in accepted or "already answered" in rejected[line]["reason"]
    _roundtrip_jsonl(tmp, rejects)
    texts = [a for ans in index.by_id.values() for a in ans.answers]
    texts += [q for q in index.by_text]
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp / "answers.parquet")
    _tokenizes(texts)


# --------------------------------------------------------------------------- judge pairs


@st.composite
def _valid_pair(draw):
    if draw(st.booleans()):  # HH-RLHF dialogue strings
        q, a, b = draw(words), draw(words), draw(words)
        q, a, b = q.strip() or "q", a.strip() or "a", b.strip() or "b"
        head = f"\n\nHuman: {q}\n\nAssistant: "
        return {"chosen": head + a, "rejected": head + b}, None
    messages, _, _, _ = draw(chats())
    plain = [m for m in messages if isinstance(m["content"], str)] or [
        {"role": "user", "content": "q"}
    ]
    prompt = draw(st.one_of(words, st.just(plain)))
    chosen = draw(st.one_of(words, words.map(lambda w: [{"role": "assistant", "content": w}])))
    return {"prompt": prompt, "chosen": chosen, "rejected": draw(words)}, None


@given(jsonl_files(_valid_pair()), st.integers(0, 10))
def test_load_pairs_fuzz(tmp_path_factory, file, limit):
    from moaa_cluster.pipeline.judge_pairs import INPUT_SCHEMA as PAIR_SCHEMA
    from moaa_cluster.pipeline.judge_pairs import load_pairs

    data, meta = file
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "pairs.jsonl"
    path.write_bytes(data)
    pairs, rejects = load_pairs(path)
    n = sum(k != "blank" for k, _, _ in meta)
    assert len(pairs) + len(rejects) == n
    rejected, accepted = _split_outcomes(meta, rejects, _jsonl_line)
    for line, (kind, _, _) in enumerate(meta, start=1):
        if kind in ("tainted", "bytes", "utext", "bigint"):
            assert line in rejected
        if kind == "valid":
            assert line in accepted, rejected[line]["reason"]
    for pair in pairs:
        assert all(isinstance(pair[k], str) and pair[k].strip() for k in ("chosen", "rejected"))
        assert pair["prompt"] and all(isinstance(m["content"], str) for m in pair["prompt"])
        body = {k: v for k, v in pair.items() if k != "id"}
        assert (
            pair["id"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
        )
        _tokenizes([pair["chosen"], pair["rejected"]], pair["prompt"])
    pq.write_table(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA), tmp / "pairs.parquet")
    assert pq.read_table(tmp / "pairs.parquet").to_pylist() == pairs
    _roundtrip_jsonl(tmp, rejects)

    pairs_l, rejects_l = load_pairs(path, limit)
    assert pairs_l == pairs[:limit]
    # records are read up to the limit-th pair: the rejects before it are the same
    if limit == 0:
        assert rejects_l == []
    else:
        stop = accepted[limit - 1] if limit <= len(accepted) else None
        assert rejects_l == [r for r in rejects if stop is None or _jsonl_line(r["where"]) < stop]


# --------------------------------------------------------------------------- the shared rules


@given(json_values, st.lists(st.sampled_from(["a", "b"]), max_size=4), surrogate)
def test_check_record_rejects_exactly_the_unencodable(value, keys, bad):
    record = value
    for key in keys:
        record = {key: [record]}
    assert _encodable(record)
    check_record(record, max_depth=10_000)  # encodable: passes
    tainted = {"x": [record, f"ok{bad}"]}
    with pytest.raises(Reject, match=rf"lone surrogate U\+{ord(bad):04X}\) in x\[1\] at char 2"):
        check_record(tainted, max_depth=10_000)


def test_regression_reasons_name_field_and_position():
    with pytest.raises(Reject) as info:
        check_record({"messages": [{"role": "user", "content": "fine"}, {"content": "ab\udc00"}]})
    assert str(info.value) == (
        "unencodable text (lone surrogate U+DC00) in messages[1].content at char 2"
    )
    with pytest.raises(Reject, match=r"in a key of messages\[0\]"):
        check_record({"messages": [{"\ud800": 1}]})
    with pytest.raises(Reject, match=r'in \["odd key"\]\[0\]'):
        check_record({"odd key": ["\udfff"]})


def test_regression_depth_limit_is_exact():
    def nest(n):
        value: object = "leaf"
        for _ in range(n):
            value = [value]
        return value

    check_record(nest(MAX_DEPTH))
    with pytest.raises(Reject, match=f"more than {MAX_DEPTH} levels"):
        check_record(nest(MAX_DEPTH + 1))
    check_record(nest(50_000), max_depth=100_000)  # iterative: no RecursionError


def test_regression_nul_and_controls_are_kept(tmp_path):
    path = tmp_path / "in.jsonl"
    text = "a\x00b\x01c\x1b[0m\u202e\u0301😀"
    path.write_text(json.dumps({"turns": [text]}) + "\n", encoding="utf-8")
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert rejects == [] and rows[0]["turns"] == [text]
    _check_instruction_rows(rows, tmp_path)


def test_regression_huge_field_survives_every_step(tmp_path):
    path = tmp_path / "in.jsonl"
    big = "word " * 200_000  # 1 MB
    path.write_text(json.dumps({"instruction": big}) + "\n", encoding="utf-8")
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert rejects == [] and rows[0]["turns"] == [big]
    _check_instruction_rows(rows, tmp_path)


def test_regression_parquet_bad_row_rejects_only_itself(tmp_path):
    col = pa.array([b"good one", b"\xed\xa0\x80 CESU surrogate", b"good two"], pa.binary())
    pq.write_table(pa.table({"prompt": col.view(pa.string())}), tmp_path / "p.parquet")
    rows, rejects = load_rows([Source(name="s", path=str(tmp_path / "p.parquet"))])
    assert [r["turns"] for r in rows] == [["good one"], ["good two"]]
    assert [r["where"] for r in rejects] == ["p.parquet[1]"]
    assert "UnicodeDecodeError" in rejects[0]["reason"]


def test_regression_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UnreadableFile, match="x.parquet"):
        list(read_records(tmp_path / "x.parquet"))
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(UnreadableFile, match="x.jsonl.gz"):
        list(read_records(tmp_path / "x.jsonl.gz"))


def test_regression_truncated_gzip_keeps_what_was_read(tmp_path):
    import gzip

    whole = gzip.compress(b"".join(b'{"prompt": "p%d"}\n' % i for i in range(2000)))
    (tmp_path / "t.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    got = list(read_records(tmp_path / "t.jsonl.gz"))
    *good, (where, last) = got
    assert good and all(isinstance(rec, dict) for _, rec in good)
    assert isinstance(last, Reject) and "unreadable after line" in str(last)
    assert where == f"t.jsonl.gz:{len(good) + 1}"


def test_regression_judge_pairs_bad_records(tmp_path):
    from moaa_cluster.pipeline.judge_pairs import INPUT_SCHEMA as PAIR_SCHEMA
    from moaa_cluster.pipeline.judge_pairs import load_pairs

    hh = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(
        b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}\n'  # 1: invalid UTF-8
        + b"[" * 3000
        + b"]" * 3000
        + b"\n"  # 2: too deep for the parser
        + b'{"prompt": "q", "chosen": "a", "rejected": "b", "n": '
        + b"1" * 5000
        + b"}\n"  # 3: int too long
        + b'{"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}\n'  # 4
        + b'{"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}\n'  # 5
        + b'{"prompt": "q", "chosen": "\\ud800", "rejected": "b"}\n'  # 6: lone surrogate
        + b'{"chosen": 1, "rejected": 2}\n'  # 7: HH fields that are not strings
        + b"\xef\xbb\xbf"
        + json.dumps(hh).encode()
        + b"\r\n"  # 8: fine
    )
    pairs, rejects = load_pairs(path)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ([{"role": "user", "content": "q"}], "good", "bad")
    ]
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert set(reasons) == {f"pairs.jsonl:{i}" for i in range(1, 8)}
    assert reasons["pairs.jsonl:1"] == "invalid UTF-8 at byte 30"
    assert "RecursionError" in reasons["pairs.jsonl:2"]
    assert "Exceeds the limit" in reasons["pairs.jsonl:3"]
    assert "with text content" in reasons["pairs.jsonl:4"]
    assert reasons["pairs.jsonl:5"] == "'chosen' must be a non-empty string or message list"
    assert "lone surrogate U+D800) in chosen" in reasons["pairs.jsonl:6"]
    assert reasons["pairs.jsonl:7"] == "'chosen' must be an HH-RLHF dialogue string, got int"
    pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA)  # what the judge-eval stage writes
    # the id is computed as before the shared reader: a resumed run finds its judged pairs
    body = {k: v for k, v in pairs[0].items() if k != "id"}
    assert (
        pairs[0]["id"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    )
