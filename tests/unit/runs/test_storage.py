"""Run directories on object storage: the run files, shards, rejects, manifests and training
data through a real S3-compatible server (moto, ``tests/s3_server.py``), and locally the same
way. The tasks themselves run on it in the integration and fault tests."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage
from moaa_cluster.runs.files import read_json, read_jsonl, save_json, write_jsonl
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.shards import consolidate, finished_id_array, open_run, write_shard
from moaa_cluster.runs.task_run import write_rejects

SHARD = pa.schema([("id", pa.string()), ("text", pa.string()), ("error", pa.string())])


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path):
    if request.param == "local":
        return tmp_path / "run"
    return request.getfixturevalue("s3").uri("unit", uuid.uuid4().hex[:8])


def _shard(rows):
    return pa.Table.from_pylist(rows, schema=SHARD)


def test_run_files_round_trip(run_dir):
    open_run(run_dir, [])
    save_json(storage.join(run_dir, "summary.json"), {"a": 1, "b": [1, 2]})
    assert read_json(storage.join(run_dir, "summary.json")) == {"a": 1, "b": [1, 2]}
    assert read_json(storage.join(run_dir, "absent.json")) is None
    odd = [{"id": "1", "text": "caf\u00e9 \ud800 \u2028 line"}, {"id": "2", "value": b"raw"}]
    path = write_rejects(run_dir, odd[:1], odd[1:])
    back = read_jsonl(path)
    assert [r["id"] for r in back] == ["1", "2"] and back[0]["text"] == odd[0]["text"]
    write_rejects(run_dir)  # replaced whole, and present though empty
    assert storage.exists(path) and read_jsonl(path) == []
    write_jsonl(storage.join(run_dir, "m.jsonl"), iter([{"step": 1}]))
    assert read_jsonl(storage.join(run_dir, "m.jsonl")) == [{"step": 1}]
    Manifest(task="synth", counts={"rows_ok": 1}, timings_s={"total": 1.0}).save(run_dir)
    loaded = Manifest.load(run_dir)
    assert loaded.task == "synth" and loaded.counts == {"rows_ok": 1}


def test_shards_resume_and_consolidate_on_any_storage(run_dir):
    open_run(run_dir, [])
    write_shard(run_dir, _shard([{"id": "a", "text": None, "error": "engine down"}]))
    write_shard(run_dir, _shard([{"id": "b", "text": "B", "error": None}]))
    write_shard(run_dir, _shard([{"id": "a", "text": "A", "error": None}]))
    write_shard(run_dir, _shard([{"id": "c", "text": None, "error": "bad"}]))
    assert finished_id_array(run_dir).to_pylist() == ["a", "b"]  # failed, then finished: finished
    done, failed = consolidate(run_dir)
    assert sorted((r["id"], r["text"]) for r in done) == [("a", "A"), ("b", "B")]
    assert [r["id"] for r in failed] == ["c"]
    open_run(run_dir, [], overwrite=True)
    assert len(finished_id_array(run_dir)) == 0 and consolidate(run_dir) == ([], [])


def test_expand_keeps_a_uri_and_expands_a_local_path():
    from pathlib import Path

    assert storage.expand("s3://bucket/a//b.jsonl") == "s3://bucket/a//b.jsonl"
    assert storage.expand("~/a.jsonl") == str(Path("~/a.jsonl").expanduser())
    assert storage.expand(Path("rel/a.jsonl")) == "rel/a.jsonl"


def test_walk_files_lists_every_file_at_any_depth(run_dir):
    for rel in ("b.jsonl", "a/c.jsonl", "a/d/.hidden.jsonl"):
        storage.write_bytes(storage.join(run_dir, "in", *rel.split("/")), b"x")
    storage.make_dir(storage.join(run_dir, "in", "empty"))
    found = storage.walk_files(storage.join(run_dir, "in"))
    assert sorted(found) == ["a/c.jsonl", "a/d/.hidden.jsonl", "b.jsonl"]
    assert storage.walk_files(storage.join(run_dir, "nope")) == []


def test_directories_listed_copied_and_fetched(run_dir, tmp_path):
    for name in ("checkpoint_000001", "checkpoint_000002", "other"):
        storage.write_bytes(storage.join(run_dir, "ray_train", name, "f.bin"), b"x" * 10)
    found = storage.list_dirs(storage.join(run_dir, "ray_train"), "checkpoint_")
    assert [str(p).rsplit("/", 1)[-1] for p in found] == ["checkpoint_000001", "checkpoint_000002"]
    assert storage.kind(found[0]) == "dir" and storage.kind(storage.join(run_dir, "nope")) is None
    fs, src = storage.filesystem(storage.join(run_dir, "ray_train"))
    storage.copy_tree(fs, src, storage.join(run_dir, "copy"))
    assert storage.read_bytes(storage.join(run_dir, "copy", "other", "f.bin")) == b"x" * 10
    local = storage.fetch(storage.join(run_dir, "copy"), tmp_path / "fetched")
    assert (local / "checkpoint_000002" / "f.bin").read_bytes() == b"x" * 10
    for ckpt in found:
        storage.remove(ckpt)
    assert storage.list_dirs(storage.join(run_dir, "ray_train"), "checkpoint_") == []


def test_a_missing_bucket_is_a_one_line_config_error(s3):
    with pytest.raises(ConfigError, match="not writable"):
        open_run(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/run", [])


def test_training_reads_a_synth_run_on_object_storage(s3):
    from moaa_cluster.runs.files import write_parquet_atomic
    from moaa_cluster.training import data as train_data

    ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [{"id": "1", "messages": ok}, {"id": "2", "messages": ok[:1]}]
    run = s3.uri("synth-for-train", uuid.uuid4().hex[:8])
    # a run written with single_file=false: only the sft/ dataset directory
    write_parquet_atomic(pa.Table.from_pylist(rows), storage.join(run, "sft", "part-0.parquet"))
    assert train_data.resolve_path("sft", run) == storage.join(run, "sft")
    kept, rejects = train_data.prepare("sft", run)
    assert kept == [{"messages": ok}]
    assert [r["id"] for r in rejects] == ["2"] and "assistant" in rejects[0]["reason"]
    # the single file wins when it is there
    write_parquet_atomic(pa.Table.from_pylist(rows[:1]), storage.join(run, "sft.parquet"))
    assert train_data.resolve_path("sft", run) == storage.join(run, "sft.parquet")
    with pytest.raises(ConfigError, match="without prefs.parquet"):
        train_data.resolve_path("dpo", run)
    with pytest.raises(ConfigError, match="not found"):
        train_data.resolve_path("sft", s3.uri("nothing-here"))
