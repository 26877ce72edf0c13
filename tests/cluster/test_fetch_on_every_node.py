"""A checkpoint on object storage reaches every node of a multi-node engine.

An engine whose placement group spans several nodes (tensor or pipeline parallel across
machines) loads its checkpoint on each of them, so the copy from object storage
(``engines/fetch_checkpoint.FetchCheckpoint``, a Ray Serve LLM callback) has to run on each.
Here: two real Ray nodes (two raylets on this machine), the engine's LLMConfig built by
``serve_llm.llm_config``, and Serve LLM's own node initialization (what a replica runs before
vLLM starts) with the bundles one per node. No engine starts: what is checked is where the
copy runs and what the engine would load. About 40 s (a second Ray cluster, vLLM imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("two_node_fetch.py")
MODEL = "smollm2-135m-instruct"


def test_the_checkpoint_copy_runs_on_every_node_of_the_engine(
    tmp_path, models_dir, s3, monkeypatch
):
    from moaa_cluster.runs.model_cache import cache_dir
    from tests.conftest import REPO

    # the files the copy needs (config.json marks a checkpoint); weights make no difference
    local = models_dir / MODEL
    small = [f for f in local.iterdir() if f.is_file() and f.suffix != ".safetensors"]
    for f in small:
        with s3.fs.open_output_stream(f"{s3.bucket}/models/{MODEL}/{f.name}") as out:
            out.write(f.read_bytes())
    uri = s3.uri("models", MODEL)
    cache, marks = tmp_path / "remote-models", tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, **s3.env, "MOAA_REMOTE_MODELS_DIR": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    monkeypatch.setenv("MOAA_REMOTE_MODELS_DIR", str(cache))
    dest = str(cache_dir(uri))  # where the driver says every node puts its copy
    done = subprocess.run(
        [sys.executable, str(SCRIPT), uri, dest, str(marks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found["nodes"]) == 2 and found["pg_nodes"] == found["nodes"]
    assert found["ran_on"] == found["nodes"]  # the copy ran once on each node
    assert found["loaded"] == dest  # and the engine loads the copy
    for f in small:
        assert (Path(dest) / f.name).read_bytes() == f.read_bytes()
