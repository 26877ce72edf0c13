"""SIGKILL one engine's vLLM process in the middle of a `moaa synth`: every row once, none
failed, the rows that hit the dead engine retried.

Once rows flow (a shard is on disk), the proposer engine's ``VLLM::EngineCore`` is killed
(the aggregator's engine, SmolLM2, stays up): Serve replaces the replica, the rows that hit
the dead engine are retried, not lost or failed, and the run's output says so.

A `kill -9` of the driver and the rerun that resumes are the other fault tests' (each costs a
full engine start on these 2 cores): `test_kill_resume_prefs.py` with real engines (orphaned
engine processes exit on their own; finished rows kept as they were), and
`test_object_storage_resume.py` for synth's streaming path (every row exactly once).

`make test-slow`, not CI (~500 s here: two engine starts and a replica replaced); the retry and
engine-state logic it exercises has unit tests (`tests/unit/engines/test_faults.py`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.faults.realstack import engine_core, moaa_cmd, orphaned_engines, start, wait_for_shards

pytestmark = pytest.mark.slow

LIMIT = 24
MODEL = "gemma-3-270m"  # a proposer only


def test_synth_survives_an_engine_death(tmp_path: Path, models_dir: Path):
    out_root = tmp_path / "outputs"
    cmd = moaa_cmd(
        "synth",
        f"output_root={out_root}",
        f"limit={LIMIT}",
        "cluster.batch_size=4",
        "cluster.workers=2",
        "mixture.sampling.max_tokens=48",
        "truncated=keep",  # every row in sft.parquet, cut off or not: the test counts them
        "progress=false",
    )
    started = time.time()
    run_dir = out_root / "synth-embedded-embedded_demo"
    log = tmp_path / "run.log"
    proc = start(cmd, models_dir, log)
    try:
        wait_for_shards(proc, run_dir, 1, log, timeout=900)
        core = engine_core(MODEL)
        assert core is not None, f"no VLLM::EngineCore under the {MODEL} replica"
        killed = core.pid
        core.kill()
        t_kill = time.monotonic()
        restart_s = None
        while proc.poll() is None:  # the replica Serve starts in its place has a new engine
            new = engine_core(MODEL)
            if restart_s is None and new is not None and new.pid != killed:
                restart_s = time.monotonic() - t_kill
            time.sleep(1)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text(errors="replace")
    left = orphaned_engines(started, kill=True)
    assert rc == 0, out[-4000:]
    assert not left, f"engine processes left behind after the run: {left}"

    # every input exactly once, none failed
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["rows_ok"] == LIMIT and c["rows_failed"] == 0 and c["rejects_input"] == 0
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == LIMIT
    for r in rows:  # complete rows: both proposers and the aggregator answered
        assert sorted(x["model"] for x in r["calls"]) == [
            MODEL,
            "smollm2-135m-instruct",
            "smollm2-135m-instruct",
        ]
        assert all(x["completion_tokens"] > 0 for x in r["calls"])

    # the engine kill hit rows in flight: retried, not lost or failed; Serve replaced the
    # replica, and the run's output says so
    assert c["rows_retried"] >= 1, "the kill hit no row in flight: the test proved nothing"
    assert f"retried: {c['rows_retried']} rows hit a transient engine error" in out
    assert restart_s is not None, "no new engine process appeared for the killed one"
    assert f"engine {MODEL}: UNHEALTHY" in out, out[-3000:]
    back = [ln for ln in out.splitlines() if f"engine {MODEL}: serving again after" in ln]
    assert back, out[-3000:]
    print(
        f"killed {MODEL} EngineCore pid {killed}; new engine process after {restart_s:.0f} s; "
        f"{back[0].strip()}; {c['rows_retried']} rows retried; {LIMIT} rows ok; "
        f"total {time.time() - started:.0f} s"
    )
