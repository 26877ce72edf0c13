"""Instruction sources on object storage (``s3://...``) through a real S3-compatible server
(moto, ``tests/s3_server.py``): read by the driver (``load_rows``) and by Ray Data read tasks
(``input_stream``) as the same files read locally, rejects located by the URI."""

from __future__ import annotations

import gzip
import json
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from moaa_cluster.data import input_stream as stream
from moaa_cluster.data.records import UnreadableFile
from moaa_cluster.data.sources import Source, load_rows
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import concat_rejects
from moaa_cluster.runs.files import read_jsonl


def _lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _upload(s3, local) -> str:
    """Copies the local file or directory ``local`` to a fresh prefix; returns its URI."""
    uri = s3.uri("inputs", uuid.uuid4().hex[:8], local.name)
    storage.copy_tree(pafs.LocalFileSystem(), str(local), uri)
    return uri


def _tree(tmp_path):
    """A directory of JSONL, gzipped JSONL and Parquet files (one nested) with names whose
    string order differs from their path order (``a.jsonl`` vs ``a/b.jsonl``)."""
    d = tmp_path / "in"
    (d / "a").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(
        _lines({"instruction": "first"}, {"instruction": "a1"})
        + b'{"instruction": "broken"\n'  # malformed
        + _lines({"instruction": "first"}, {"nothing": 1})  # duplicate; no known field
    )
    (d / "a" / "b.jsonl").write_bytes(_lines({"instruction": "nested"}))
    (d / "a-c.jsonl.gz").write_bytes(gzip.compress(_lines({"instruction": "zipped"})))
    pq.write_table(
        pa.table({"instruction": ["p0", "first", "p2"], "id": ["x0", "x1", "x2"]}),
        d / "b.parquet",
    )
    (d / "notes.txt").write_text("not a data file")
    return d


def _no_prefix(wheres):
    """Locations without their directories: what a local read names them."""
    return [w.rsplit("/", 1)[-1] for w in wheres]


def test_a_jsonl_object_reads_as_the_local_file(tmp_path, s3):
    local = tmp_path / "one.jsonl"
    local.write_bytes(_lines({"instruction": "q0"}, {"instruction": "q1", "system": "s"}))
    uri = _upload(s3, local)
    want = load_rows([Source("src", path=str(local))])
    got = load_rows([Source("src", path=uri)])
    assert got == want and len(got[0]) == 2 and got[1] == []


def test_a_prefix_reads_its_data_files_in_the_local_order(tmp_path, s3):
    d = _tree(tmp_path)
    uri = _upload(s3, d)
    want_rows, want_rejects = load_rows([Source("src", path=str(d))])
    for path in (uri, uri + "/"):  # a prefix with or without its slash
        rows, rejects = load_rows([Source("src", path=path)])
        assert rows == want_rows
        assert [r["turns"][0] for r in rows] == ["nested", "zipped", "first", "a1", "p0", "p2"]
        assert _no_prefix(r["where"] for r in rejects) == [r["where"] for r in want_rejects]
    units = stream.source_units(Source("src", path=uri + "/"), 0)
    # path order (``sorted`` of local Paths), not string order ("a-c" < "a." < "a/")
    assert [u.path for u in units] == [
        f"{uri}/{f}" for f in ("a/b.jsonl", "a-c.jsonl.gz", "a.jsonl", "b.parquet")
    ]


def test_rejects_in_an_object_name_the_uri(tmp_path, s3):
    d = _tree(tmp_path)
    uri = _upload(s3, d)
    _, rejects = load_rows([Source("src", path=f"{uri}/a.jsonl")])
    by_where = {r["where"]: r for r in rejects}
    assert list(by_where) == [f"{uri}/a.jsonl:3", f"{uri}/a.jsonl:4", f"{uri}/a.jsonl:5"]
    assert "malformed JSON" in by_where[f"{uri}/a.jsonl:3"]["reason"]
    assert f"duplicate of {uri}/a.jsonl:1" in by_where[f"{uri}/a.jsonl:4"]["reason"]
    assert by_where[f"{uri}/a.jsonl:5"]["record"] == {"nothing": 1}
    _, rejects = load_rows([Source("src", path=f"{uri}/b.parquet")])
    assert [r["where"] for r in rejects] == []
    _, rejects = load_rows([Source("src", path=uri)])
    assert f"{uri}/b.parquet[1]" in {r["where"] for r in rejects}, "a duplicate across files"


def test_a_missing_object_or_prefix_is_a_config_error(s3, monkeypatch):
    missing = s3.uri("inputs", "nowhere", "data.jsonl")
    with pytest.raises(ConfigError) as info:
        load_rows([Source("x", path=missing)])
    assert str(info.value) == f"source x: {missing} does not exist"
    prefix = Source("x", path=s3.uri("nowhere/"), hub_id="org/set")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # as for a local path: the hub reads instead
    assert stream.source_units(prefix, 0)[0].path is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"does not exist \(or enable the hub"):
        stream.source_units(prefix, 0)


def test_an_unreadable_object_names_the_uri_not_a_local_copy(tmp_path, s3):
    local = tmp_path / "broken.parquet"
    local.write_bytes(b"not parquet at all")
    uri = _upload(s3, local)
    with pytest.raises(UnreadableFile) as info:
        load_rows([Source("x", path=uri)])
    assert uri in str(info.value) and "moaa-input-" not in str(info.value)


def test_a_saved_dataset_on_object_storage(tmp_path, s3):
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"instruction": "t0"}, {"instruction": "t1"}]),
            "test": datasets.Dataset.from_list([{"instruction": "from test"}, {"x": 1}]),
        }
    ).save_to_disk(str(saved))
    uri = _upload(s3, saved)
    assert stream.source_units(Source("d", path=uri), 0)[0].path == uri, "one unit"
    want = load_rows([Source("d", path=str(saved), split="test")])
    rows, rejects = load_rows([Source("d", path=uri, split="test")])
    assert rows == want[0] and [r["turns"][0] for r in rows] == ["from test"]
    assert [r["where"] for r in rejects] == [f"{uri}[1]"]


def test_streamed_read_over_object_storage_matches_the_driver_read(tmp_path, s3, ray_local):
    from moaa_cluster.pipeline.instructions import open_instructions

    uri = _upload(s3, _tree(tmp_path))
    sources = [
        Source("s", path=uri),
        Source("t", path=f"{uri}/a.jsonl", limit=2, sample_seed=1),
    ]
    want_rows, want_rejects = load_rows(sources)
    run = tmp_path / "run"
    run.mkdir()
    found = open_instructions(sources, run)
    rows = [r for b in found.todo.iter_batches(batch_format="pyarrow") for r in b.to_pylist()]
    rows.sort(key=lambda r: (r["_unit"], r["_rec"]))
    concat_rejects(run)
    rejects = read_jsonl(run / "rejects.jsonl")
    cols = ("id", "source", "source_id", "system", "turns", "answers")
    assert [{c: r[c] for c in cols} for r in rows] == want_rows
    assert all(r["where"].startswith(uri + "/") for r in rows)
    assert sorted((r["where"], r["reason"]) for r in rejects) == sorted(
        (r["where"], r["reason"]) for r in want_rejects
    )
    assert any(r["where"] == f"{uri}/a.jsonl:3" for r in rejects)
