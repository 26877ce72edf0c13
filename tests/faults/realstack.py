"""Helpers shared by the fault-injection tests: start a CLI run, wait for shards, find and
kill the processes of a real run, read shards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq


def moaa_cmd(task: str, *overrides: str) -> list[str]:
    """The command line of ``moaa <task> <overrides>`` in this interpreter."""
    return [sys.executable, "-m", "moaa_cluster.cli", task, *overrides]


def start(cmd: list[str], models_dir: Path, log: Path) -> subprocess.Popen:
    """Starts ``cmd`` in its own session (so a kill of its group takes Ray down with it)."""
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def run(cmd: list[str], models_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_shards(
    proc: subprocess.Popen, run_dir: Path, n: int, log: Path, timeout: float = 600
) -> int:
    """Waits until ``run_dir/shards`` holds ``n`` shards; fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        have = len(list(run_dir.glob("shards/*.parquet")))
        if have >= n:
            return have
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:]
    raise AssertionError(
        f"no {n} shards before the run ended or timed out (rc {proc.poll()}): {tail}"
    )


def shard_rows(run_dir: Path) -> dict[str, dict]:
    """Every row of the run's shards by id (a later shard of the same id wins)."""
    rows = {}
    for f in sorted((run_dir / "shards").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["id"]] = r
    return rows


def orphaned_engines(since: float, kill: bool = False) -> list[str]:
    """vLLM engine processes re-parented to init, started after ``since``.

    After SIGKILL of a driver's session its engine processes are re-parented to init for a
    few seconds (they are not in its process group) and then exit on their own, having
    lost their parent; a next run also reaps any that stay (``runtime.reap_orphaned_engines``).
    With ``kill`` they are killed here (cleanup after a test that failed).
    """
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "ppid", "create_time", "cmdline", "name"]):
        title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
        if p.info["ppid"] == 1 and p.info["create_time"] >= since and title.startswith("VLLM::"):
            found.append(f"{p.info['pid']} {title.strip()[:40]}")
            if kill:
                p.kill()
    return found


def watch_orphans(since: float, timeout_s: float = 90.0) -> tuple[list[str], float | None]:
    """Polls after a kill until no orphaned engine process is left (or ``timeout_s``).

    Returns:
        Every orphan seen, and the seconds until none was left (None: still there).
    """
    t0 = time.monotonic()
    seen: dict[str, None] = {}
    quiet_since = None
    while time.monotonic() - t0 < timeout_s:
        now = orphaned_engines(since)
        seen.update(dict.fromkeys(now))
        if now:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 15:  # they appear a few seconds after the kill
            return list(seen), round(quiet_since - t0, 1)
        time.sleep(1)
    return list(seen), None


def engine_core(model: str):
    """The ``VLLM::EngineCore`` process of the Serve LLM replica hosting ``model``, or None."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        if not " ".join(p.info["cmdline"] or []).startswith(f"ray::ServeReplica:moaa-{model}:"):
            continue
        try:
            for child in p.children(recursive=True):
                if " ".join(child.cmdline()).startswith("VLLM::EngineCore"):
                    return child
        except psutil.Error:  # the replica went away while we looked
            continue
    return None
