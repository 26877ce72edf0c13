"""`kill -9` a running `moaa synth`, rerun the same command: every row once, none redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.faults.realstack import orphaned_engines, shard_rows, watch_orphans


def test_killed_synth_resumes_without_loss_or_duplicates(tmp_path: Path, models_dir: Path):
    out_root = tmp_path / "outputs"
    cmd = [
        sys.executable,
        "-m",
        "moaa_cluster.cli",
        "synth",
        f"output_root={out_root}",
        "limit=24",
        "cluster.batch_size=4",
        "cluster.workers=2",
        "mixture.sampling.max_tokens=48",
        "truncated=keep",  # every row in sft.parquet, cut off or not: the test counts them
    ]
    started = time.time()
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    run_dir = out_root / "synth-embedded-embedded_demo"
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        # its own session, so the kill takes Ray and the engines down with the driver
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(run_dir.glob("shards/*.parquet"))) >= 2:
            break
        time.sleep(1)
    assert proc.poll() is None, f"run ended before the kill: {log.read_text()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    orphans, gone_after = watch_orphans(started)
    print(f"engine processes orphaned by kill -9: {orphans}; all gone after {gone_after} s")
    assert gone_after is not None, f"orphaned engine processes did not exit: {orphans}"
    before = shard_rows(run_dir)
    assert 2 * 4 <= len(before) < 24  # killed mid-run, with finished blocks on disk
    assert not (run_dir / "sft.parquet").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    left = orphaned_engines(started, kill=True)
    assert not left, f"engine processes left behind after the rerun: {left}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["rows_resumed"] == len(before)
    assert manifest["counts"]["rows_ok"] == 24
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24  # every input exactly once
    by_id = {r["id"]: r for r in rows}
    for row_id, old in before.items():  # finished before the kill: kept, not generated again
        assert by_id[row_id]["calls"] == old["calls"]
    after = shard_rows(run_dir)
    assert all(after[i]["finished_at"] == before[i]["finished_at"] for i in before)
