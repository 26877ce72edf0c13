"""SIGKILL one engine's vLLM process in the middle of `moaa synth`: Serve replaces the replica,
the rows that hit the dead engine are retried, and the run completes with every row once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.faults.realstack import (
    engine_core,
    moaa_cmd,
    orphaned_engines,
    start,
    wait_for_shards,
)

LIMIT = 12
MODEL = "gemma-3-270m"  # a proposer only: the aggregator's engine (SmolLM2) stays up


def test_run_survives_an_engine_death(tmp_path: Path, models_dir: Path):
    out_root = tmp_path / "outputs"
    cmd = moaa_cmd(
        "synth",
        f"output_root={out_root}",
        f"limit={LIMIT}",
        "cluster.batch_size=2",
        "cluster.workers=2",
        "mixture.sampling.max_tokens=48",
        "truncated=keep",  # every row in sft.parquet, cut off or not: the test counts them
        "progress=false",
    )
    run_dir = out_root / "synth-embedded-embedded_demo"
    log = tmp_path / "run.log"
    started = time.time()
    proc = start(cmd, models_dir, log)
    try:
        wait_for_shards(proc, run_dir, 1, log)  # engines up and rows flowing
        core = engine_core(MODEL)
        assert core is not None, f"no VLLM::EngineCore under the {MODEL} replica"
        killed = core.pid
        core.kill()
        t_kill = time.monotonic()
        done_before = len(list(run_dir.glob("shards/*.parquet")))
        restart_s = None
        while proc.poll() is None:  # the replica Serve starts in its place has a new engine
            new = engine_core(MODEL)
            if restart_s is None and new is not None and new.pid != killed:
                restart_s = time.monotonic() - t_kill
            time.sleep(1)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text(errors="replace")
    total_s = time.time() - started
    orphans = orphaned_engines(started, kill=True)
    assert rc == 0, out[-4000:]

    # every row exactly once, none failed, nothing rejected
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["rows_ok"] == LIMIT and c["rows_failed"] == 0 and c["rejects_input"] == 0
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == LIMIT
    rejects = run_dir / "rejects.jsonl"
    assert not rejects.exists() or not rejects.read_text().strip()
    for r in rows:  # complete rows: both proposers and the aggregator answered
        assert sorted(x["model"] for x in r["calls"]) == [
            MODEL,
            "smollm2-135m-instruct",
            "smollm2-135m-instruct",
        ]
        assert all(x["completion_tokens"] > 0 for x in r["calls"])

    # the kill hit rows in flight, and they were retried, not lost or failed
    assert c["rows_retried"] >= 1, "the kill hit no row in flight: the test proved nothing"
    assert f"retried: {c['rows_retried']} rows hit a transient engine error" in out
    # Serve replaced the replica, and the run's output says so
    assert restart_s is not None, "no new engine process appeared for the killed one"
    assert f"engine {MODEL}: UNHEALTHY" in out, out[-3000:]
    back = [ln for ln in out.splitlines() if f"engine {MODEL}: serving again after" in ln]
    assert back, out[-3000:]
    print(
        f"engine death: killed {MODEL} EngineCore pid {killed} with {done_before} shard(s) done; "
        f"new engine process after {restart_s:.0f} s; run log: {back[0].strip()}; "
        f"{c['rows_retried']} rows retried; {LIMIT} rows ok, 0 failed; total {total_s:.0f} s; "
        f"timings {manifest['timings_s']}; orphaned vLLM processes after exit: {orphans}"
    )
