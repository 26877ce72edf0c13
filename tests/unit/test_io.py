"""Reading instruction sources into rows and rejects (``moaa_cluster.pipeline.io``)."""

from __future__ import annotations

import json

import pytest

from moaa_cluster.pipeline.io import Source, append_jsonl, load_rows, read_jsonl


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
