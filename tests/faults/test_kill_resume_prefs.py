"""`kill -9` a running `moaa prefs`, rerun the same command: every prompt once, none redone.

`make test-slow`, not CI (~6 min here: two engine starts). CI kills and resumes a run in
`test_object_storage_resume.py` (synth's streaming path, every row exactly once).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.faults.realstack import (
    moaa_cmd,
    orphaned_engines,
    run,
    shard_rows,
    start,
    wait_for_shards,
    watch_orphans,
)

pytestmark = pytest.mark.slow

LIMIT = 6


def test_killed_prefs_resumes_without_loss_or_duplicates(tmp_path: Path, models_dir: Path):
    out_root = tmp_path / "outputs"
    cmd = moaa_cmd(
        "prefs",
        f"output_root={out_root}",
        f"limit={LIMIT}",
        "num_candidates=3",
        "plan=knockout",
        "sampling.max_tokens=48",
        "judge.criteria_filtering=false",  # one call less per comparison: this is about resume
        # one engine (SmolLM2 samples, critiques and decides): the slow Gemma seat and its
        # engine start, twice, are not what this test is about
        "~judge.models.gemma_3_270m",
        "judge.proposers=[smollm2_135m_instruct]",
        "judge.sampling.max_tokens=48",
        "judge.verdict_sampling.max_tokens=64",
        "truncated=allow",  # at 48 tokens nearly every candidate is cut off: judge them anyway
        "cluster.batch_size=2",  # prefs runs batch_size // 2 = 1 row per shard
        "cluster.workers=3",  # 3 rows in flight: the CPU engines batch them
        "progress=false",
    )
    run_dir = out_root / "prefs-embedded-embedded_demo"
    log = tmp_path / "first.log"
    started = time.time()
    proc = start(cmd, models_dir, log)
    wait_for_shards(proc, run_dir, 2, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    orphans, gone_after = watch_orphans(started)
    print(f"engine processes orphaned by kill -9: {orphans}; all gone after {gone_after} s")
    assert gone_after is not None, f"orphaned engine processes did not exit: {orphans}"
    before = shard_rows(run_dir)
    assert 2 <= len(before) < LIMIT  # killed mid-run, with finished rows on disk
    assert all(r["error"] is None for r in before.values())
    assert not (run_dir / "prefs.parquet").exists()

    again = run(cmd, models_dir, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    left = orphaned_engines(started, kill=True)
    assert not left, f"engine processes left behind after the rerun: {left}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["rows_resumed"] == len(before)
    assert c["rows_failed"] == 0 and c["rejects_input"] == 0
    skips = ("identical", "no_preference", "all_truncated", "truncated_preferred")
    assert c["pairs"] + sum(c[f"skipped_{k}"] for k in skips) == LIMIT

    # every prompt exactly once: as a pair in prefs.parquet or with its reason in rejects
    pairs = pq.read_table(run_dir / "prefs.parquet").to_pylist()
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines() if x]
    assert all(r["stage"] == "prefs" for r in rejects)
    ids = [r["id"] for r in pairs] + [r["where"] for r in rejects]
    assert len(ids) == len(set(ids)) == LIMIT
    after = shard_rows(run_dir)
    assert set(after) == set(ids)

    # finished before the kill: kept as they were, not sampled or judged again
    by_id = {r["id"]: r for r in pairs}
    for row_id, old in before.items():
        assert after[row_id]["finished_at"] == old["finished_at"]
        assert after[row_id]["candidates"] == old["candidates"]
        assert after[row_id]["judge"] == old["judge"]
        if old["status"] == "ok":
            assert by_id[row_id]["candidates"] == old["candidates"]
            assert by_id[row_id]["chosen"] == old["chosen"]
    # the rerun judged only the rest: its calls add up from the shards it wrote
    new = [r for i, r in after.items() if i not in before]
    assert len(new) == LIMIT - len(before)
    assert all(r["finished_at"] > max(o["finished_at"] for o in before.values()) for r in new)
    print(
        f"prefs kill/resume: {len(before)} rows done before the kill, {len(new)} after; "
        f"{c['pairs']} pairs, {len(rejects)} rejects; timings {manifest['timings_s']}"
    )
