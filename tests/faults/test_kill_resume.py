"""`kill -9` a running `moaa synth`, rerun the same command, and SIGKILL one engine's vLLM
process in the middle of the rerun: every row once, none redone, none failed.

Two faults in one real run (each costs a full engine start on these 2 cores):

- the driver's whole process group is killed with finished blocks on disk; the rerun skips
  them and the engine processes the kill orphaned exit on their own;
- in the rerun, once rows flow again, the proposer engine's ``VLLM::EngineCore`` is killed
  (the aggregator's engine, SmolLM2, stays up): Serve replaces the replica, the rows that hit
  the dead engine are retried, not lost or failed, and the run's output says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.faults.realstack import (
    engine_core,
    moaa_cmd,
    orphaned_engines,
    shard_rows,
    start,
    wait_for_shards,
    watch_orphans,
)

LIMIT = 24
MODEL = "gemma-3-270m"  # a proposer only


def test_killed_synth_resumes_and_survives_an_engine_death(tmp_path: Path, models_dir: Path):
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

    # --- 1. kill -9 of the driver's process group, with finished blocks on disk ----------
    first = start(cmd, models_dir, tmp_path / "first.log")
    try:
        wait_for_shards(first, run_dir, 2, tmp_path / "first.log", timeout=900)
    finally:  # if the run ended before 2 shards, the wait's message is the failure, not this
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    time.sleep(3)
    orphans, gone_after = watch_orphans(started)
    print(f"engine processes orphaned by kill -9: {orphans}; all gone after {gone_after} s")
    assert gone_after is not None, f"orphaned engine processes did not exit: {orphans}"
    before = shard_rows(run_dir)
    assert 2 * 4 <= len(before) < LIMIT  # killed mid-run, with finished blocks on disk
    assert not (run_dir / "sft.parquet").exists()
    shards_before = len(list(run_dir.glob("shards/*.parquet")))

    # --- 2. the same command again; one engine killed once rows flow -------------------------
    log = tmp_path / "again.log"
    again = start(cmd, models_dir, log)
    try:
        wait_for_shards(again, run_dir, shards_before + 1, log, timeout=900)
        core = engine_core(MODEL)
        assert core is not None, f"no VLLM::EngineCore under the {MODEL} replica"
        killed = core.pid
        core.kill()
        t_kill = time.monotonic()
        restart_s = None
        while again.poll() is None:  # the replica Serve starts in its place has a new engine
            new = engine_core(MODEL)
            if restart_s is None and new is not None and new.pid != killed:
                restart_s = time.monotonic() - t_kill
            time.sleep(1)
        rc = again.wait(timeout=900)
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
    out = log.read_text(errors="replace")
    left = orphaned_engines(started, kill=True)
    assert rc == 0, out[-4000:]
    assert not left, f"engine processes left behind after the rerun: {left}"

    # every input exactly once, none failed; rows finished before the kill not generated again
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["rows_resumed"] == len(before)
    assert c["rows_ok"] == LIMIT and c["rows_failed"] == 0 and c["rejects_input"] == 0
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == LIMIT
    by_id = {r["id"]: r for r in rows}
    for row_id, old in before.items():
        assert by_id[row_id]["calls"] == old["calls"]
    after = shard_rows(run_dir)
    assert all(after[i]["finished_at"] == before[i]["finished_at"] for i in before)
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
        f"resumed {len(before)} rows; killed {MODEL} EngineCore pid {killed}; new engine "
        f"process after {restart_s:.0f} s; {back[0].strip()}; {c['rows_retried']} rows "
        f"retried; {LIMIT} rows ok; total {time.time() - started:.0f} s"
    )
