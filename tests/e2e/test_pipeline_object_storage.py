"""`moaa pipeline output_dir=s3://...`: the whole pipeline with its run directory on an
S3-compatible server (moto, started by the session fixture), at the toy size of
`test_pipeline.py` (`make test-slow`: ~12 min, the same again as `make test-e2e`).

Every stage writes its run into the bucket; the trained checkpoints land there, and the
engines that serve them (the SFT model sampling candidates and answering its evaluation, the
DPO model answering its own) copy each once into the node-local cache first. A rerun finds
every stage complete in the bucket and starts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.e2e.test_pipeline import PIPELINE, STAGES, TOY

pytestmark = pytest.mark.slow


def test_pipeline_with_its_run_directory_in_the_bucket(tmp_path, models_dir, s3):
    run = s3.uri("runs", "pipeline-toy")
    cache = tmp_path / "remote-models"
    env = {
        **os.environ,
        **s3.env,
        "MOAA_MODELS_DIR": str(models_dir),
        "MOAA_REMOTE_MODELS_DIR": str(cache),
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [*PIPELINE, f"output_dir={run}", *TOY]
    first = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3000)
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-5000:])

    manifest = json.loads(s3.read(f"{run}/manifest.json"))
    assert manifest["skipped"] == [] and set(manifest["timings_s"]) == {*STAGES, "total"}
    print("stage wall times (s):", manifest["timings_s"])
    for stage in ("synth", "sft", "prefs", "dpo", "eval_sft", "eval"):
        part = json.loads(s3.read(f"{run}/{stage}/manifest.json"))
        assert part["status"] == "complete", (stage, part.get("status"))
    for stage in ("sft", "dpo"):
        assert s3.exists(f"{run}/{stage}/model/model.safetensors"), stage
    prefs = json.loads(s3.read(f"{run}/prefs/manifest.json"))
    assert prefs["models"]["sampler"]["path"] == f"{run}/sft/model"
    summary = json.loads(s3.read(f"{run}/eval/summary.json"))
    assert summary["model"] == "smollm2-135m-instruct-dpo" and summary["evaluated"] == 3
    assert s3.read(f"{run}/report.md").startswith(b"#")
    # each trained checkpoint copied once to this node's cache, whole; nothing local but that
    copies = sorted(d.name for d in cache.iterdir() if not d.name.endswith("-meta"))
    assert len(copies) == 2, copies
    for d in cache.iterdir():
        if not d.name.endswith("-meta"):
            assert (d / "model.safetensors").is_file(), d
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "outputs").exists()

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(s3.read(f"{run}/manifest.json"))["skipped"] == list(STAGES)
    assert "engine(s)" not in again.stdout + again.stderr  # no engine was started
