"""A streaming `moaa synth` whose run directory is on an S3-compatible server (moto, started
here in server mode): killed at about half its rows, rerun: every row exactly once.

The models answer through the `openai` backend from the instant stand-in server
(`benchmarks/standin_server.py`), so the test spends its time on what it checks: reading,
Ray Data, shards and outputs on object storage, the kill and the resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

ROWS = 600
BUCKET = "moaa-runs"
MODELS = ("smollm2_135m_instruct", "gemma_3_270m")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_env(tmp_path):
    """A moto S3 server with one bucket; the environment that points clients at it."""
    import pyarrow.fs as pafs

    port = _free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            s3.create_dir(BUCKET)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    yield env, s3
    proc.terminate()
    proc.wait(10)
    log.close()


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


def test_a_synth_run_on_object_storage_is_killed_and_resumes_exactly_once(
    tmp_path, models_dir, s3_env
):
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from benchmarks.standin_server import serve
    from moaa_cluster.data.sources import Source, load_rows

    env_s3, s3 = s3_env
    inputs = tmp_path / "inputs.jsonl"
    _inputs(inputs)
    want, want_rejects = load_rows([Source("bench", path=str(inputs))])
    assert len(want) == ROWS and len(want_rejects) == 2
    run = f"s3://{BUCKET}/runs/synth-bench"
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
            if len(_shards(s3, f"{BUCKET}/runs/synth-bench")) >= 40:  # one listing a poll
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
        at_kill = _shard_rows(s3, f"{BUCKET}/runs/synth-bench")
        assert 40 <= at_kill < ROWS, at_kill

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]

    prefix = f"{BUCKET}/runs/synth-bench"
    sft = pads.dataset(f"{prefix}/sft", format="parquet", filesystem=s3).to_table(columns=["id"])
    seen = Counter(sft["id"].to_pylist())
    assert sorted(seen) == sorted(r["id"] for r in want), "every row, none extra"
    assert max(seen.values()) == 1, "no row twice"
    single = pads.dataset(f"{prefix}/sft.parquet", format="parquet", filesystem=s3)
    assert single.count_rows() == ROWS
    with s3.open_input_stream(f"{prefix}/manifest.json") as fh:
        manifest = json.loads(fh.read())
    counts = manifest["counts"]
    assert counts["rows_resumed"] == at_kill and counts["rows_ok"] == ROWS
    assert counts["rejects_input"] == 2 and manifest["status"] == "complete"
    with s3.open_input_stream(f"{prefix}/rejects.jsonl") as fh:
        rejects = [json.loads(line) for line in fh.read().decode().splitlines()]
    assert sorted(r["where"] for r in rejects) == sorted(r["where"] for r in want_rejects)
    infos = s3.get_file_info(pafs.FileSelector(f"{prefix}/rejects", allow_not_found=True))
    assert infos, "the read tasks wrote their reject parts next to the run"
    assert "resume_scan" in manifest["timings_s"]
