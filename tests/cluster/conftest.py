"""Cluster tests (`make test-cluster`): a real `ray start` head and a real Slurm, no mocks.

Every Ray process these tests start carries ``MOAA_RAY_CLUSTER=<tag>`` in its environment
(as slurm/ray_cluster.sh sets it), so "nothing is left running" is checked for exactly
the processes of that cluster, whatever else runs on the machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import models_dir  # noqa: F401  (packaged models, prepared once)

VENV_BIN = Path(sys.executable).parent
# a small, fast job: two demo conversations, short answers
# truncated=keep: at 48 tokens most final answers are cut off; these tests count rows
SYNTH_ARGS = ["limit=2", "mixture.sampling.max_tokens=48", "truncated=keep"]
# the launch path is what these tests check: one engine (SmolLM2 proposes and aggregates)
# starts and answers sooner than the embedded two-model mixture, which the e2e test runs
ONE_ENGINE_SYNTH_ARGS = ["mixture=embedded_single_proposer", *SYNTH_ARGS]


def marked_pids(tag: str) -> list[int]:
    """PIDs of live processes whose environment has ``MOAA_RAY_CLUSTER=<tag>``."""
    want = f"MOAA_RAY_CLUSTER={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if want in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def cmdline_pids(fragment: str) -> list[int]:
    """PIDs of live processes whose command line contains ``fragment`` (e.g. a temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd:
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, timeout: float, interval: float = 2.0, what: str = "condition"):
    """Polls ``predicate`` until it returns a truthy value; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def ray_env(models_dir, tmp_path) -> dict:  # noqa: F811  (the imported fixture)
    """Environment for the ray CLI and the job: the venv first on PATH, a fresh auth token."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        # Ray swaps a loopback --node-ip-address for the host's outward address unless told
        # the cluster is a single host: these tests keep all traffic on 127.0.0.1
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "MOAA_MODELS_DIR": str(models_dir),
        "MOAA_OUTPUT_ROOT": str(tmp_path / "outputs"),
    }


def runtime_env_json(env: dict) -> str:
    """The job's runtime_env as users build it: ``python -m ray_jobs.runtime_env``."""
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.runtime_env"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()
