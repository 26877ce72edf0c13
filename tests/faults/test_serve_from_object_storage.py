"""An engine serving a checkpoint that lives on object storage (`make test-slow`).

`moaa sample` with ``sampler.path=s3://...`` on a real vLLM engine, its run directory in the
same bucket (moto, started by the session fixture). Before vLLM starts, the engine's node
copies the checkpoint into its node-local cache (a Ray Serve LLM callback,
`engines/fetch_checkpoint.py`), and vLLM loads that copy. The checkpoint here is the packaged
SmolLM2, uploaded by the test: what `moaa pipeline output_dir=s3://...` serves after training
is the same kind of directory (`test_object_storage_resume.py` trains one into the bucket).

Marked slow: one more engine start (~160 s on 2 cores) than CI's fault tests can afford.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def _upload(fs, local: Path, key: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            with fs.open_output_stream(f"{key}/{f.relative_to(local)}") as out:
                out.write(f.read_bytes())


def test_sample_serves_a_checkpoint_from_the_bucket(tmp_path, models_dir, s3):
    import pyarrow.dataset as pads

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(f'{{"prompt": "Name a colour, {i}."}}\n' for i in range(3)))
    _upload(s3.fs, models_dir / MODEL, f"{s3.bucket}/models/{MODEL}")
    cache = tmp_path / "remote-models"
    env = {
        **os.environ,
        **s3.env,
        "MOAA_MODELS_DIR": str(models_dir),
        "MOAA_REMOTE_MODELS_DIR": str(cache),
    }
    env.pop("RAY_ADDRESS", None)
    run = s3.uri("runs", "sample-bucket")
    cmd = [sys.executable, "-m", "moaa_cluster.cli", "sample", "sampler.name=from-bucket"]
    cmd += [f"sampler.path={s3.uri('models', MODEL)}", "~dataset.sources.embedded_demo"]
    cmd += ["dataset.name=bench", f"+dataset.sources.bench.path={inputs}", "limit=3"]
    cmd += ["num_candidates=2", "sampling.max_tokens=12", f"output_dir={run}", "progress=false"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    # one copy in the node cache, complete, and it is what the engine loaded
    copies = [d for d in cache.iterdir() if not d.name.endswith("-meta")]
    assert len(copies) == 1, list(cache.iterdir())
    local = models_dir / MODEL
    for f in local.rglob("*"):
        if f.is_file():
            copied = copies[0] / f.relative_to(local)
            assert copied.stat().st_size == f.stat().st_size, copied
    table = pads.dataset(
        f"{s3.key(run)}/candidates.parquet", format="parquet", filesystem=s3.fs
    ).to_table()
    assert table.num_rows == 3
    assert all(len(c) == 2 and all(t for t in c) for c in table["candidates"].to_pylist())
