"""Reading instruction sources into rows and rejects (``moaa_cluster.data.sources``)."""

from __future__ import annotations

import json

import pytest

from moaa_cluster.data.sources import Source, load_rows
from moaa_cluster.runs.files import append_jsonl, read_jsonl


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _instructions(n, prefix="question"):
    return [{"instruction": f"{prefix} number {i}?"} for i in range(n)]


def _texts(rows):
    return [r["turns"][0] for r in rows]


# --------------------------------------------------------------------------- JSONL validation


def test_jsonl_rejects_have_location_stage_and_reason(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"instruction": "first"}\n'  # 1 ok
        b"\n"  # 2 blank: skipped, not a reject
        b'{"instruction": "second"\n'  # 3 malformed JSON
        b'{"instruction": "caf\xff"}\n'  # 4 invalid UTF-8
        b"   \n"  # 5 whitespace only: skipped
        b'{"instruction": "first"}\n'  # 6 duplicate of line 1
        b'{"nothing": 1}\n'  # 7 no known field
        b'{"instruction": "third"}\n'  # 8 ok
    )
    rows, rejects = load_rows([Source(name="src", path=str(path))])

    assert _texts(rows) == ["first", "third"]
    assert [r["where"] for r in rejects] == ["in.jsonl:3", "in.jsonl:4", "in.jsonl:6", "in.jsonl:7"]
    for r in rejects:
        assert r["source"] == "src"
        assert r["stage"] == "input"
        assert r["reason"]
    by_where = {r["where"]: r for r in rejects}
    assert "malformed JSON" in by_where["in.jsonl:3"]["reason"]
    assert "UTF-8" in by_where["in.jsonl:4"]["reason"]
    assert "duplicate" in by_where["in.jsonl:6"]["reason"]
    assert "in.jsonl:1" in by_where["in.jsonl:6"]["reason"], "names the first occurrence"
    assert "none of the fields" in by_where["in.jsonl:7"]["reason"]
    # unparseable lines keep no record; parsed-but-invalid ones keep the raw record
    assert by_where["in.jsonl:3"]["record"] is None
    assert by_where["in.jsonl:4"]["record"] is None
    assert by_where["in.jsonl:7"]["record"] == {"nothing": 1}
    assert by_where["in.jsonl:6"]["record"] == {"instruction": "first"}


def test_row_shape(tmp_path):
    path = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"question_id": 81, "turns": ["q1", "q2"]},
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ]
            },
        ],
    )
    rows, rejects = load_rows([Source(name="mt", path=str(path))])
    assert rejects == []
    assert set(rows[0]) == {"id", "source", "source_id", "system", "turns", "answers"}
    assert rows[0]["source"] == "mt"
    assert rows[0]["source_id"] == "81"
    assert rows[0]["turns"] == ["q1", "q2"]
    assert rows[0]["system"] is None
    assert rows[1]["system"] == "be brief"
    assert rows[1]["turns"] == ["hi"]


def test_ids_are_stable_across_reads(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", _instructions(5))
    a, _ = load_rows([Source(name="s", path=str(path))])
    b, _ = load_rows([Source(name="s", path=str(path))])
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert len({r["id"] for r in a}) == 5


# --------------------------------------------------------------------------- issue #13: no crash


def test_lone_surrogate_is_a_reject_not_a_crash(tmp_path):
    path = tmp_path / "in.jsonl"
    # the JSON escape of a lone surrogate: valid JSON, text no UTF-8 writer can encode
    path.write_bytes(b'{"turns": ["a\\ud800b"]}\n{"instruction": "fine"}\n')
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert _texts(rows) == ["fine"]
    assert [r["where"] for r in rejects] == ["in.jsonl:1"]
    assert rejects[0]["reason"] == "unencodable text (lone surrogate U+D800) in turns[0] at char 1"
    assert rejects[0]["record"] == {"turns": ["a\ud800b"]}, "the raw record is kept"
    out = tmp_path / "rejects.jsonl"
    append_jsonl(out, rejects)
    assert read_jsonl(out) == rejects, "written with an escape, read back the same"
    out.read_bytes().decode("utf-8")  # the file is valid UTF-8


def test_byte_order_marks_and_crlf(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"instruction": "after a file BOM"}\r\n'
        b'{"instruction": "crlf"}\r\n'
        b'\xef\xbb\xbf{"instruction": "after a line BOM (cat of two files)"}\n'
        b"\xef\xbb\xbf\r\n"  # a BOM on a blank line: still blank
        b'{"instruction": "last line without newline"}'
    )
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert rejects == []
    assert _texts(rows) == [
        "after a file BOM",
        "crlf",
        "after a line BOM (cat of two files)",
        "last line without newline",
    ]


def test_chat_formats_through_load_rows(tmp_path):
    path = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]},
            {
                "conversations": [
                    {"from": "human", "value": "sharegpt"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        ],
    )
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert _texts(rows) == ["parts", "sharegpt"]
    assert rows[1]["answers"] == ["a"]
    assert [r["where"] for r in rejects] == ["in.jsonl:3"]
    assert "'image_url' part" in rejects[0]["reason"]


def test_lines_the_parser_cannot_take_are_rejects(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"[" * 5000 + b"]" * 5000 + b"\n"  # json.loads: RecursionError
        b'{"turns": ["q"], "n": ' + b"9" * 5000 + b"}\n"  # int of more than 4300 digits
        b'{"turns": ["q"], "deep": ' + b"[" * 150 + b"]" * 150 + b"}\n"
        b"null\n"  # a record, not a blank line
        b'{"instruction": "ok"}\n'
    )
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert _texts(rows) == ["ok"]
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert "nested too deeply to parse (RecursionError" in reasons["in.jsonl:1"]
    assert "ValueError: Exceeds the limit" in reasons["in.jsonl:2"]
    assert "nests more than 100 levels deep" in reasons["in.jsonl:3"]
    assert "got NoneType" in reasons["in.jsonl:4"]
    append_jsonl(tmp_path / "rejects.jsonl", rejects)
    assert len(read_jsonl(tmp_path / "rejects.jsonl")) == 4


def test_an_unexpected_error_rejects_only_its_record(tmp_path, monkeypatch):
    import moaa_cluster.data.sources as io_mod

    real = io_mod.to_conversation

    def flaky(record):
        if record.get("instruction") == "boom":
            raise RuntimeError("adapter bug")
        return real(record)

    monkeypatch.setattr(io_mod, "to_conversation", flaky)
    path = _write_jsonl(tmp_path / "in.jsonl", [{"instruction": "boom"}, {"instruction": "ok"}])
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    assert _texts(rows) == ["ok"]
    assert rejects[0]["reason"] == "RuntimeError: adapter bug"
    assert rejects[0]["record"] == {"instruction": "boom"}


def test_json_file_with_bom_malformed_or_holding_lines(tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "x"}]).encode())
    assert _texts(load_rows([Source(name="a", path=str(bom))])[0]) == ["x"]

    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "x"}, {"instr', encoding="utf-8")
    rows, rejects = load_rows([Source(name="b", path=str(broken))])
    assert rows == [] and [r["where"] for r in rejects] == ["broken.json"]
    assert rejects[0]["reason"].startswith("malformed JSON:")
    assert "line 1 column" in rejects[0]["reason"]

    lines = tmp_path / "lines.json"  # JSON Lines named .json
    lines.write_text('{"instruction": "a"}\n{"instruction": "b"}\n', encoding="utf-8")
    rows, rejects = load_rows([Source(name="c", path=str(lines))])
    assert _texts(rows) == ["a", "b"] and rejects == []

    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'[{"instruction": "caf\xe9"}]')
    rows, rejects = load_rows([Source(name="d", path=str(not_utf8))])
    assert rows == [] and rejects[0]["reason"] == "invalid UTF-8 at byte 21"


def test_unreadable_parquet_names_the_file(tmp_path):
    from moaa_cluster.data.records import UnreadableFile

    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(UnreadableFile, match="broken.parquet"):
        load_rows([Source(name="p", path=str(path))])


def test_limit_counts_rows_and_keeps_every_reject(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"instruction": "a"}\n{"bad\n{"instruction": "b"}\n{"instruction": "a"}\n'
        b'{"instruction": "c"}\n'
    )
    rows, rejects = load_rows([Source(name="s", path=str(path))])
    rows_1, rejects_1 = load_rows([Source(name="s", path=str(path))], limit=1)
    assert _texts(rows) == ["a", "b", "c"] and len(rejects) == 2
    assert rows_1 == rows[:1], "rows past the limit are dropped"
    assert rejects_1 == rejects, "rejects do not depend on the limit (duplicates included)"


# --------------------------------------------------------------------------- limit / sampling


def test_limit_takes_first_n(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", _instructions(10))
    rows, _ = load_rows([Source(name="s", path=str(path), limit=3)])
    assert _texts(rows) == [f"question number {i}?" for i in range(3)]


def test_limit_larger_than_input_keeps_all(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", _instructions(4))
    rows, _ = load_rows([Source(name="s", path=str(path), limit=10, sample_seed=1)])
    assert len(rows) == 4


def test_limit_with_sample_seed_is_seeded_sample(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", _instructions(50))
    all_texts = [f"question number {i}?" for i in range(50)]

    def sample(seed):
        rows, _ = load_rows([Source(name="s", path=str(path), limit=8, sample_seed=seed)])
        return _texts(rows)

    first = sample(7)
    assert len(first) == 8
    assert len(set(first)) == 8
    assert set(first) <= set(all_texts)
    assert first == sample(7), "same seed, same rows"
    assert first != all_texts[:8], "a sample, not the head of the file"
    # kept in file order
    assert first == sorted(first, key=all_texts.index)
    others = [sample(seed) for seed in (8, 9, 10)]
    assert any(o != first for o in others), "different seeds generally draw different rows"


# --------------------------------------------------------------------------- other formats


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"prompt": "p0", "uid": "a"}, {"prompt": "p1", "uid": "b"}, {"prompt": "", "uid": "c"}]
        ),
        path,
    )
    rows, rejects = load_rows([Source(name="pq", path=str(path))])
    assert _texts(rows) == ["p0", "p1"]
    assert [r["source_id"] for r in rows] == ["a", "b"]
    assert [r["where"] for r in rejects] == ["in.parquet[2]"]
    assert "empty" in rejects[0]["reason"]


def test_json_list_input(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps([{"instruction": "a"}, {"turns": ["b", "c"]}, 3]), encoding="utf-8")
    rows, rejects = load_rows([Source(name="j", path=str(path))])
    assert [r["turns"] for r in rows] == [["a"], ["b", "c"]]
    assert [r["where"] for r in rejects] == ["in.json[2]"]
    assert "JSON object" in rejects[0]["reason"]


def test_json_single_object_input(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"instruction": "only"}), encoding="utf-8")
    rows, _ = load_rows([Source(name="j", path=str(path))])
    assert _texts(rows) == ["only"]


def test_save_to_disk_directory(tmp_path):
    import datasets

    out = tmp_path / "ultrachat"
    datasets.Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "u2"},
                    {"role": "assistant", "content": "a2"},
                    {"role": "user", "content": "u3"},
                    {"role": "assistant", "content": "a3"},
                ]
            },
        ]
    ).save_to_disk(str(out))
    rows, rejects = load_rows([Source(name="uc", path=str(out))])
    assert rejects == []
    assert [r["turns"] for r in rows] == [["u1"], ["u2", "u3"]]


def test_save_to_disk_dataset_dict_uses_split(tmp_path):
    import datasets

    out = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train_sft": datasets.Dataset.from_list([{"instruction": "from train"}]),
            "test_sft": datasets.Dataset.from_list([{"instruction": "from test"}]),
        }
    ).save_to_disk(str(out))
    rows, _ = load_rows([Source(name="d", path=str(out), split="test_sft")])
    assert _texts(rows) == ["from test"]


def test_builtin_demo():
    rows, rejects = load_rows([Source(name="embedded_demo", path="builtin:demo")])
    assert rejects == []
    assert len(rows) == 40
    assert sum(len(r["turns"]) == 1 for r in rows) == 32
    assert sum(len(r["turns"]) == 2 for r in rows) == 8
    assert len({r["id"] for r in rows}) == 40
    assert {r["source"] for r in rows} == {"embedded_demo"}


def test_unknown_builtin():
    with pytest.raises(FileNotFoundError, match="nosuch"):
        load_rows([Source(name="x", path="builtin:nosuch")])


def test_missing_path_raises(tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_rows([Source(name="x", path=str(missing))])
    assert str(missing) in str(info.value)


def test_source_without_path_or_hub_id():
    with pytest.raises(ValueError, match="path or hub_id"):
        load_rows([Source(name="x")])


def test_source_name_is_part_of_the_id(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", _instructions(3))
    b = _write_jsonl(tmp_path / "b.jsonl", _instructions(3))
    rows, rejects = load_rows([Source(name="a", path=str(a)), Source(name="b", path=str(b))])
    assert rejects == [], "same content under another source is not a duplicate"
    assert len(rows) == 6
    assert len({r["id"] for r in rows}) == 6
    assert [r["source"] for r in rows] == ["a"] * 3 + ["b"] * 3


# --------------------------------------------------------------------------- output helpers


def test_append_and_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "rejects.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, [])
    assert path.exists() and path.read_text() == "", "an empty file: the run had no rejects"
    first = [{"id": "1", "text": "héllo ✓"}, {"id": "2", "nested": {"a": [1, 2]}, "none": None}]
    append_jsonl(path, first)
    append_jsonl(path, [{"id": "3"}])
    assert read_jsonl(path) == first + [{"id": "3"}]
    assert "héllo ✓" in path.read_text(encoding="utf-8"), "written as UTF-8, not escaped"


def test_append_jsonl_writes_what_utf8_cannot_and_what_json_cannot(tmp_path):
    path = tmp_path / "rejects.jsonl"
    odd = [
        {"id": "1", "record": {"k\udfff": "v\ud800"}},  # lone surrogates, in a key too
        {"id": "2", "record": b"bytes"},  # default=str
        {"id": "3", "record": "ünïcode"},
    ]
    append_jsonl(path, odd)
    back = read_jsonl(path)
    assert back[0] == odd[0] and back[1]["record"] == "b'bytes'" and back[2] == odd[2]
    text = path.read_bytes().decode("utf-8")
    assert "\\ud800" in text.splitlines()[0] and "ünïcode" in text.splitlines()[2]
