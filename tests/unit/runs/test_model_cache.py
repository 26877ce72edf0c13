"""Checkpoints on object storage, through a real S3-compatible server (moto,
``tests/s3_server.py``): their node-local copies (``runs.model_cache``), the engine's model
source and the Serve LLM callback that makes the copy on each engine node, and model specs
that point at a URI. Nothing here starts an engine."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import model_cache, storage

FILES = {
    "config.json": json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4}).encode(),
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "model.safetensors": bytes(range(256)) * 64,
    "sub/extra.txt": b"nested",
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.CACHE_ENV, str(root))
    return root


def _upload(s3, files=FILES) -> str:
    uri = s3.uri("ckpt", uuid.uuid4().hex[:8], "model")
    for rel, data in files.items():
        storage.write_bytes(f"{uri}/{rel}", data)
    return uri


def _local_files(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != model_cache.COMPLETE
    }


def test_a_checkpoint_is_copied_whole_once_into_a_directory_named_after_its_uri(s3, cache):
    uri = _upload(s3)
    dest = model_cache.fetch_checkpoint(uri)
    assert dest == model_cache.cache_dir(uri) and dest.parent == cache
    assert len(dest.name) == 12  # sha1 of the URI, 12 hex digits
    assert _local_files(dest) == FILES
    assert [p.name for p in cache.iterdir()] == [dest.name]  # no temporary left over
    # a second call copies nothing: a local change survives it
    (dest / "sub" / "extra.txt").write_bytes(b"touched here")
    assert model_cache.fetch_checkpoint(uri) == dest
    assert (dest / "sub" / "extra.txt").read_bytes() == b"touched here"


def test_a_partial_or_outdated_copy_is_copied_again(s3, cache):
    uri = _upload(s3)
    dest = model_cache.cache_dir(uri)
    dest.mkdir(parents=True)  # a copy killed half-way (no marker): not a checkpoint
    (dest / "config.json").write_bytes(b"{")
    assert _local_files(model_cache.fetch_checkpoint(uri)) == FILES
    # the checkpoint rewritten at the same URI (overwrite, from_stage): copied again
    storage.write_bytes(f"{uri}/config.json", b'{"num_hidden_layers": 3}')
    assert (model_cache.fetch_checkpoint(uri) / "config.json").read_bytes() == (
        b'{"num_hidden_layers": 3}'
    )
    assert [p.name for p in cache.iterdir()] == [dest.name]


def test_the_small_files_are_copied_apart_for_the_driver(s3, cache):
    uri = _upload(s3)
    meta = model_cache.local_files(uri)
    assert meta is not None and Path(meta) == model_cache.cache_dir(uri, weights=False)
    assert set(_local_files(Path(meta))) == {
        "config.json",
        "tokenizer_config.json",
        "sub/extra.txt",
    }
    assert not model_cache.cache_dir(uri).exists()  # no weights copied for that
    # a local path is itself; a URI with no checkpoint (not trained yet) is none
    assert model_cache.local_files("~/m") == str(Path("~/m").expanduser())
    assert model_cache.local_files(s3.uri("ckpt", "nothing-here")) is None
    with pytest.raises(ConfigError, match="no checkpoint at"):
        model_cache.fetch_checkpoint(s3.uri("ckpt", "nothing-here"))


def test_a_model_spec_on_object_storage_validates_against_the_object(s3, cache):
    uri = _upload(s3)
    ModelSpec(name="m", path=uri).validate()
    with pytest.raises(ConfigError, match="no checkpoint at s3://"):
        ModelSpec(name="m", path=s3.uri("ckpt", "missing")).validate()
    ModelSpec(name="m", path=s3.uri("ckpt", "missing")).validate(check_files=False)
    assert not cache.exists()  # validating copies nothing


def test_the_engine_loads_the_node_local_copy_its_callback_makes(s3, cache):
    from moaa_cluster.engines.fetch_checkpoint import FetchCheckpoint
    from moaa_cluster.engines.serve_llm import FETCH_CALLBACK, llm_config, model_source

    uri = _upload(s3)
    assert model_source(ModelSpec(name="m", path="/models/m")) == ("/models/m", None)
    source, callback = model_source(ModelSpec(name="m", path=uri))
    assert source == str(model_cache.cache_dir(uri))
    assert callback == {
        "callback_class": FETCH_CALLBACK,
        "callback_kwargs": {"uri": uri, "dest": source},
    }
    cfg = llm_config(ModelSpec(name="m", path=uri))
    assert cfg.model_loading_config.model_source == source
    assert cfg.callback_config.callback_class == FETCH_CALLBACK
    assert cfg.engine_kwargs["trust_remote_code"] is False
    # what Serve LLM runs on each node of the engine before vLLM starts there
    hook = FetchCheckpoint(llm_config=None, **callback["callback_kwargs"])
    hook.on_before_download_model_files_distributed()
    assert _local_files(Path(source)) == FILES


def test_the_driver_reads_planning_facts_and_the_tokenizer_dir_from_a_uri(s3, cache):
    from moaa_cluster.engines.placement import fill_from_checkpoint
    from moaa_cluster.moa.fitters import local_tokenizer_path

    uri = _upload(s3)
    spec = fill_from_checkpoint(ModelSpec(name="m", path=uri))
    assert (spec.num_hidden_layers, spec.num_attention_heads) == (2, 4)
    assert local_tokenizer_path(ModelSpec(name="m", path=uri)) == str(
        model_cache.cache_dir(uri, weights=False)
    )
    missing = ModelSpec(name="m", path=s3.uri("ckpt", "not-trained-yet"))
    assert fill_from_checkpoint(missing) == missing


def test_fetch_uses_the_same_filesystem_as_the_run(s3, cache, monkeypatch):
    """Reads go through runs.storage (pyarrow, AWS_ENDPOINT_URL), not another client."""
    calls = []
    real = storage.filesystem

    def spy(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(storage, "filesystem", spy)
    uri = _upload(s3)
    model_cache.fetch_checkpoint(uri)
    assert calls == [uri]
    assert isinstance(real(uri)[0], pafs.S3FileSystem)
