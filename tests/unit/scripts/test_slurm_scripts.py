"""slurm/ray_cluster.sh functions and the sbatch header, run by bash (no Ray, no Slurm)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

HELPER = REPO / "slurm" / "ray_cluster.sh"
SBATCH = REPO / "slurm" / "moaa.sbatch"

STATUS_V1 = """======== Autoscaler status: 2026-11-23 23:30:00 ========
Node status
---------------------------------------------------------------
Active:
 1 node_7a1c
 1 node_9f00
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/8.0 CPU
"""
STATUS_V2 = """Node status
---------------------------------------------------------------
Active:
 (no active nodes)
Idle:
 1 node_7a1c
Pending:
 1 node_0bad
Recent failures:
 (no failures)
"""


def bash(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {"PATH": os.environ["PATH"], "MOAA_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {HELPER}; {script}"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("text", "rc", "want"), [(STATUS_V1, 0, 2), (STATUS_V2, 0, 1), ("", 1, 0)])
def test_active_nodes_counts_active_and_idle_not_pending(tmp_path, text, rc, want):
    fake = tmp_path / "ray"
    (tmp_path / "status.txt").write_text(text)
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'status.txt'}\nexit {rc}\n")
    fake.chmod(0o755)
    # under `set -euo pipefail`, as in moaa.sbatch: a cluster not up yet counts 0, no exit
    out = bash("n=$(ray_active_nodes 127.0.0.1:1); echo $n", {"RAY": str(fake)})
    assert out.returncode == 0 and out.stdout.strip() == str(want), out.stderr


def test_node_args_ports_temp_dir_and_resources():
    env = {
        "SLURM_JOB_ID": "4242",
        "RAY_PORT_BASE": "31000",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_MEM_PER_NODE": "1000",  # MB
    }
    out = bash("ray_node_args", env)
    assert out.returncode == 0, out.stderr
    args = out.stdout.split("\n")
    opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}
    assert opt["--temp-dir"] == "/tmp/ray_4242"
    assert (opt["--num-cpus"], opt["--num-gpus"]) == ("16", "4")
    assert opt["--node-manager-port"] == "31003" and opt["--metrics-export-port"] == "31008"
    assert (opt["--min-worker-port"], opt["--max-worker-port"]) == ("31100", "31999")
    assert opt["--object-store-memory"] == str(1000 * 1024 * 1024 * 3 // 10)
    assert "--disable-usage-stats" in args
    # explicit overrides win over what Slurm says
    out = bash("ray_node_args", {**env, "RAY_NUM_CPUS": "8", "RAY_NUM_GPUS": "0"})
    assert "--num-cpus\n8\n--num-gpus\n0\n" in out.stdout


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, "0"),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, "3"),
        ({"CUDA_VISIBLE_DEVICES": ""}, "0"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "0"),
        ({"SLURM_GPUS_ON_NODE": "8", "CUDA_VISIBLE_DEVICES": "0"}, "8"),
    ],
)
def test_num_gpus(env, want):
    assert bash("ray_num_gpus", env).stdout.strip() == want


def test_missing_cpu_count_is_one_clear_error():
    out = bash("ray_num_cpus", {"SLURM_JOB_ID": "1"})
    assert out.returncode != 0 and "no CPU count: set RAY_NUM_CPUS" in out.stderr


def test_port_base_comes_from_the_job_id_and_skips_a_busy_block():
    job = 7  # block 20000 + 7000
    assert bash(f"ray_pick_port_base 127.0.0.1 {job}").stdout.strip() == "27000"
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 27000 + 500))  # a worker port of that block
        except OSError:
            pytest.skip("port 27500 is in use here already")
        busy.listen()
        assert bash(f"ray_pick_port_base 127.0.0.1 {job}").stdout.strip() == "28000"


def test_cleanup_node_ends_only_processes_of_its_job():
    ours = subprocess.Popen(["sleep", "300"], env={**os.environ, "MOAA_RAY_CLUSTER": "t-1"})
    other = subprocess.Popen(["sleep", "300"], env={**os.environ, "MOAA_RAY_CLUSTER": "t-10"})
    try:
        time.sleep(0.2)
        pids = bash("ray_job_pids", {"RAY_JOB_TAG": "t-1"}).stdout.split()
        assert pids == [str(ours.pid)]
        out = bash("ray_cleanup_node", {"RAY_JOB_TAG": "t-1"})
        assert f"ending leftover Ray processes: {ours.pid}" in out.stderr
        assert ours.wait(timeout=15) is not None
        assert other.poll() is None
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_sbatch_header_and_syntax():
    text = SBATCH.read_text()
    for path in (SBATCH, HELPER, REPO / "scripts" / "ci_slurm.sh"):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
    lines = text.splitlines()
    first_command = next(
        i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")
    )
    sbatch_lines = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert sbatch_lines and max(sbatch_lines) < first_command  # sbatch stops reading there
    assert "#SBATCH --signal=B:TERM@" in text  # the traps get a chance before the time limit
    assert re.search(r"^trap .*TERM", text, re.M) and re.search(r"^trap cleanup EXIT", text, re.M)
