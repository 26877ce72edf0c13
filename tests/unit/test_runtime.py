"""A killed run's orphaned engine processes are found and reaped by the next run."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from moaa_cluster import runtime

# double fork: the middle process exits, the grandchild (titled like a vLLM engine core) is
# re-parented to init, exactly as after `kill -9` of a driver
ORPHAN = """
import os, sys, time
import setproctitle
child = os.fork()
if child:
    print(child, flush=True)
    sys.exit(0)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)  # let the parent's pipes close
setproctitle.setproctitle("VLLM::EngineCore-orphan-test")
time.sleep(120)
"""


def _orphan() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=30
    )
    return int(proc.stdout.split()[0])


def test_orphaned_engine_is_reaped_and_a_live_one_is_not():
    pid = _orphan()
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(pid).ppid() != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        if psutil.Process(pid).ppid() != 1:
            pytest.skip("orphans are re-parented to a subreaper here, not to init")
        # a process with the same title whose parent is alive is a live run's engine
        live = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import setproctitle, time; "
                "setproctitle.setproctitle('VLLM::EngineCore-live-test'); time.sleep(60)",
            ]
        )
        try:
            time.sleep(0.5)
            assert pid in [p.pid for p in runtime.orphaned_engines()]
            reaped = runtime.reap_orphaned_engines()
            assert pid in reaped and live.pid not in reaped
            psutil.Process(pid).wait(timeout=10)  # gone
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert live.poll() is None
        finally:
            live.kill()
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
