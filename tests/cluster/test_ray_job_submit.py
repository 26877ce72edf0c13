"""`ray job submit` of the embedded synth job to a real `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import (
    ONE_ENGINE_SYNTH_ARGS,
    cmdline_pids,
    marked_pids,
    runtime_env_json,
    wait_until,
)
from tests.conftest import REPO

# what `ray job status` prints for a job that has ended
TERMINAL = {"' succeeded": "SUCCEEDED", "' failed": "FAILED", "' was stopped": "STOPPED"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ray", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture
def ray_head(ray_env, tmp_path):
    """A head started the way a user starts one, stopped by SIGTERM to its `--block` process
    (which stops exactly this cluster; `ray stop` would stop every Ray on the machine)."""
    gcs, dash, client, agent = _free_ports(4)
    # short: Ray's unix sockets live under it (108-byte limit); pytest's tmp_path is long
    temp_dir = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    tag = f"pytest-{os.getpid()}-{gcs}"
    log = tmp_path / "ray-head.log"
    cmd = (
        f"ray start --head --block --node-ip-address 127.0.0.1 --port {gcs}"
        f" --dashboard-host 127.0.0.1 --dashboard-port {dash} --include-dashboard true"
        f" --ray-client-server-port {client} --dashboard-agent-listen-port {agent}"
        # the embedded default's actors reserve 8 logical CPUs (conf/cluster/local.yaml)
        f" --num-cpus 8 --num-gpus 0 --temp-dir {temp_dir} --disable-usage-stats"
    ).split()
    # the head knows nothing of our paths: the job gets them through its runtime_env only
    head_env = {
        k: v for k, v in ray_env.items() if k not in ("MOAA_MODELS_DIR", "MOAA_OUTPUT_ROOT")
    }
    head_env.update(MOAA_RAY_CLUSTER=tag, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            env=head_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dash}"

    def stop() -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    head = {
        "address": address,
        "temp_dir": temp_dir,
        "tag": tag,
        "ports": [gcs, dash, client, agent],
    }
    head["stop"] = stop

    def up():
        assert proc.poll() is None, f"ray start exited: {log.read_text()[-3000:]}"
        return _ray(ray_env, "job", "list", "--address", address).returncode == 0

    try:
        wait_until(up, timeout=180, what="the Ray head's Jobs API")
        yield head
    finally:
        stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_synth(ray_head, ray_env, tmp_path: Path):
    address, sid = ray_head["address"], "moaa-pytest-synth"
    runtime_env = runtime_env_json(ray_env)
    env_vars = json.loads(runtime_env)["env_vars"]
    assert env_vars["MOAA_MODELS_DIR"] == ray_env["MOAA_MODELS_DIR"]
    assert env_vars["HF_HUB_OFFLINE"] == "1"

    submit = _ray(
        ray_env,
        "job", "submit", "--address", address, "--submission-id", sid, "--no-wait",
        "--runtime-env-json", runtime_env, "--working-dir", ".",
        "--", "python", "-m", "ray_jobs.synth", *ONE_ENGINE_SYNTH_ARGS,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr

    def finished():
        out = _ray(ray_env, "job", "status", "--address", address, sid)
        text = out.stdout + out.stderr
        return next((status for said, status in TERMINAL.items() if said in text), None)

    status = wait_until(finished, timeout=600, interval=5, what=f"job {sid} to finish")
    logs = _ray(ray_env, "job", "logs", "--address", address, sid).stdout
    assert status == "SUCCEEDED", logs[-4000:]

    # the job's own summary, streamed by Ray from the driver
    assert "rows: 2 ok" in logs, logs[-3000:]
    run_dir = tmp_path / "outputs" / "synth-embedded_single_proposer-embedded_demo"
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2
    for row in rows:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"]
        assert {c["model"] for c in row["calls"]} == {"smollm2-135m-instruct"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["rows_ok"] == 2
    # the job ran in the uploaded copy, yet read the models and wrote where we said
    assert manifest["config"]["models_dir"] == ray_env["MOAA_MODELS_DIR"]
    assert manifest["config"]["output_dir"] == str(run_dir)

    # the upload: code and configs, none of the excluded bulk
    unpacked = "session_2*/runtime_resources/working_dir_files/_ray_pkg_*"  # not session_latest
    pkgs = [p for p in Path(ray_head["temp_dir"]).glob(unpacked) if p.is_dir()]
    assert len(pkgs) == 1, pkgs
    files = [p.relative_to(pkgs[0]) for p in pkgs[0].rglob("*") if p.is_file()]
    names = {str(f) for f in files}
    assert "ray_jobs/synth.py" in names and "conf/synth.yaml" in names
    assert not [n for n in names if n.startswith((".git/", ".venv/", "outputs/", ".models/"))]
    assert not [n for n in names if n.endswith(".parquet") or "__pycache__" in n]
    size = sum((pkgs[0] / f).stat().st_size for f in files)
    assert size < 20 * 2**20, f"uploaded {size / 2**20:.1f} MiB"
    print(f"working_dir upload: {len(files)} files, {size / 2**10:.0f} KiB")

    # stop: SIGTERM to `ray start --block` takes down every process of this cluster
    ray_head["stop"]()
    wait_until(
        lambda: not marked_pids(ray_head["tag"]), timeout=30, what="the cluster's processes to end"
    )
    assert not cmdline_pids(ray_head["temp_dir"])
    for port in ray_head["ports"]:  # GCS, dashboard, client server, agent: all closed
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
