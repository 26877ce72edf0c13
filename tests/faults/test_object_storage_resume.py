"""A streaming `moaa synth` whose run directory is on an S3-compatible server (moto, started
here in server mode): killed at about half its rows, rerun: every row exactly once. Then
`moaa train-sft` trains on that run with its own run directory (Ray Train's storage) there.

In synth the models answer through the `openai` backend from the instant stand-in server
(`benchmarks/standin_server.py`), so the test spends its time on what it checks: reading,
Ray Data, shards and outputs on object storage, the kill and the resume.

An engine serving a checkpoint from the bucket (what `moaa pipeline` on object storage does
after training) is `test_serve_from_object_storage.py`, in `make test-slow`: a third engine
start here would cost CI ~160 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

ROWS = 600
MODELS = ("smollm2_135m_instruct", "gemma_3_270m")


def _inputs(path: Path) -> None:
    lines = [json.dumps({"prompt": f"Say one thing about topic {i}."}) for i in range(ROWS)]
    lines.insert(5, '{"prompt": "broken')  # malformed: a reject with its line
    lines.insert(9, lines[0])  # a duplicate: a reject naming line 1
    path.write_text("\n".join(lines) + "\n")


def _shards(s3, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = s3.get_file_info(pafs.FileSelector(f"{prefix}/shards", allow_not_found=True))
    return [i.path for i in infos if i.path.endswith(".parquet")]


def _shard_rows(s3, prefix: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(s3.open_input_file(f)).metadata.num_rows for f in _shards(s3, prefix))


def test_a_synth_run_on_object_storage_is_killed_and_resumes_exactly_once(tmp_path, models_dir, s3):
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from benchmarks.standin_server import serve
    from moaa_cluster.data.sources import Source, load_rows

    env_s3, bucket, fs = s3.env, s3.bucket, s3.fs
    inputs = tmp_path / "inputs.jsonl"
    _inputs(inputs)
    want, want_rejects = load_rows([Source("bench", path=str(inputs))])
    assert len(want) == ROWS and len(want_rejects) == 2
    run = f"s3://{bucket}/runs/synth-bench"
    env = {**os.environ, **env_s3, "MOAA_MODELS_DIR": str(models_dir)}
    env.pop("RAY_ADDRESS", None)
    with serve(tokens=16) as url:
        cmd = [sys.executable, "-m", "moaa_cluster.cli", "synth", "mixture=embedded"]
        cmd += ["~dataset.sources.embedded_demo", "dataset.name=bench"]
        cmd += [f"+dataset.sources.bench.path={inputs}", f"output_dir={run}", "progress=false"]
        for m in MODELS:
            cmd += [f"++mixture.models.{m}.backend=openai", f"++mixture.models.{m}.base_url={url}"]
        log = tmp_path / "first.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_shards(fs, f"{bucket}/runs/synth-bench")) >= 40:  # one listing a poll
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"ended before the kill: {log.read_text()[-3000:]}"
        # the whole tree (Ray's own processes included), as a node failure would take it
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait()
        at_kill = _shard_rows(fs, f"{bucket}/runs/synth-bench")
        assert 40 <= at_kill < ROWS, at_kill

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]

    prefix = f"{bucket}/runs/synth-bench"
    sft = pads.dataset(f"{prefix}/sft", format="parquet", filesystem=fs).to_table(columns=["id"])
    seen = Counter(sft["id"].to_pylist())
    assert sorted(seen) == sorted(r["id"] for r in want), "every row, none extra"
    assert max(seen.values()) == 1, "no row twice"
    single = pads.dataset(f"{prefix}/sft.parquet", format="parquet", filesystem=fs)
    assert single.count_rows() == ROWS
    with fs.open_input_stream(f"{prefix}/manifest.json") as fh:
        manifest = json.loads(fh.read())
    counts = manifest["counts"]
    assert counts["rows_resumed"] == at_kill and counts["rows_ok"] == ROWS
    assert counts["rejects_input"] == 2 and manifest["status"] == "complete"
    with fs.open_input_stream(f"{prefix}/rejects.jsonl") as fh:
        rejects = [json.loads(line) for line in fh.read().decode().splitlines()]
    assert sorted(r["where"] for r in rejects) == sorted(r["where"] for r in want_rejects)
    infos = fs.get_file_info(pafs.FileSelector(f"{prefix}/rejects", allow_not_found=True))
    assert infos, "the read tasks wrote their reject parts next to the run"
    assert "resume_scan" in manifest["timings_s"]

    # the next stage on the same storage: SFT reads the synth run from the bucket, Ray Train
    # keeps its storage_path there, the exported model lands there; a rerun finds it complete
    sft_run = f"s3://{bucket}/runs/sft-bench"
    train = [sys.executable, "-m", "moaa_cluster.cli", "train-sft", f"data={run}"]
    train += [f"output_dir={sft_run}", "lora=r16", "limit=4", "train.args.max_steps=1"]
    train += ["train.args.save_steps=1", "train.args.max_length=128"]
    trained = subprocess.run(train, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    key = f"{bucket}/runs/sft-bench"
    with fs.open_input_stream(f"{key}/manifest.json") as fh:
        sft_manifest = json.loads(fh.read())
    assert sft_manifest["status"] == "complete" and sft_manifest["counts"]["steps"] == 1
    assert sft_manifest["counts"]["rows"] == 4 and sft_manifest["data"] == run
    for name in ("model/config.json", "model/model.safetensors", "train_data.parquet"):
        assert fs.get_file_info(f"{key}/{name}").type == pafs.FileType.File, name
    with fs.open_input_stream(f"{key}/metrics.jsonl") as fh:
        assert any("loss" in json.loads(line) for line in fh.read().decode().splitlines())
    left = fs.get_file_info(pafs.FileSelector(f"{key}/ray_train", allow_not_found=True))
    dirs = [i.base_name for i in left if i.type == pafs.FileType.Directory]
    ckpts = [d for d in dirs if d.startswith("checkpoint_")]
    assert left and not ckpts, "the optimizer-state checkpoints were deleted, Ray's state kept"
    again = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout[-2000:]
