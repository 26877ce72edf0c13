"""Real-stack stage-1 runs on the session's Ray cluster (engines shared across tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED

MT_BENCH = SHARED / "data" / "mt_bench" / "question.jsonl"
FIRST_THREE = [
    "dataset=mt_bench",
    f"dataset.sources.mt_bench.path={MT_BENCH}",
    "limit=3",
    "record_prompts=true",
    "mixture.sampling.max_tokens=48",
    # every row in sft.parquet, cut off or not: these tests count and compare rows (the
    # exclusion rule is checked in test_a_cli_sweep_offline)
    "truncated=keep",
]
# one shard per row, so resume has shards to keep and to redo
RESIDENT = [*FIRST_THREE, "cluster.batch_size=1"]
LAYERED = [*FIRST_THREE, "execution=layered"]


@pytest.fixture(scope="module")
def mt_bench_run(run_synth, tmp_path_factory) -> tuple[Path, dict]:
    if not MT_BENCH.exists():
        pytest.skip(f"{MT_BENCH} not available")
    run_dir = tmp_path_factory.mktemp("mt_bench_run")
    manifest = run_synth(run_dir, RESIDENT)
    return run_dir, manifest


def test_mt_bench_first_questions(mt_bench_run):
    run_dir, manifest = mt_bench_run
    assert manifest["counts"]["rows_ok"] == 3
    assert manifest["counts"]["multi_turn_rows"] == 3
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    questions = [json.loads(x) for x in MT_BENCH.read_text().splitlines()[:3]]
    assert sorted(r["source_id"] for r in rows) == sorted(str(q["question_id"]) for q in questions)
    by_sid = {r["source_id"]: r for r in rows}
    for q in questions:
        row = by_sid[str(q["question_id"])]
        users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        assert users == q["turns"]
        assert len(row["calls"]) == 6
        # turn 2's aggregator sees: K.1 system (turn-2 proposals), q1, turn-1 answer, q2
        agg2 = next(c for c in row["calls"] if c["turn"] == 1 and c["layer"] == 1)
        msgs = json.loads(agg2["prompt"])
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
        assert msgs[2]["content"] == row["messages"][1]["content"]
        for p in (c for c in row["calls"] if c["turn"] == 1 and c["layer"] == 0):
            assert p["text"] in msgs[0]["content"]


def test_resume_redoes_only_missing_rows(mt_bench_run, run_synth):
    run_dir, first = mt_bench_run
    shards = sorted((run_dir / "shards").glob("*.parquet"))
    assert len(shards) >= 2
    before = {r["id"]: r for r in pq.read_table(run_dir / "sft.parquet").to_pylist()}
    lost = {r["id"] for r in pq.read_table(shards[0]).to_pylist()}
    shards[0].unlink()  # as if the run had been killed before this block finished
    again = run_synth(run_dir, RESIDENT)
    assert again["counts"]["rows_resumed"] == 3 - len(lost)
    after = pq.read_table(run_dir / "sft.parquet").to_pylist()
    assert sorted(r["id"] for r in after) == sorted(before)  # every id exactly once
    for r in after:
        if r["id"] not in lost:  # kept rows were not generated again
            assert r["calls"] == before[r["id"]]["calls"]


@pytest.fixture(scope="module")
def layered_run(run_synth, tmp_path_factory) -> tuple[Path, dict]:
    """``execution=layered``: engines swapped per (turn, layer), parquet between passes."""
    run_dir = tmp_path_factory.mktemp("layered")
    return run_dir, run_synth(run_dir, LAYERED)


@pytest.mark.slow  # four engine swaps (~5 min here); the pass logic has unit tests on Ray Data
def test_layer_by_layer_matches_the_resident_run(mt_bench_run, layered_run):
    resident_dir, resident = mt_bench_run
    run_dir, first = layered_run
    assert first["counts"]["rows_ok"] == 3 and first["counts"]["rows_failed"] == 0
    # 2 turns x (proposers, aggregator); the proposer layer's two models fit together here
    assert len(first["execution"]) == 4
    assert sorted(p.name for p in (run_dir / "passes").iterdir()) == [
        "t0-l0-s0_1",
        "t0-l1-s0",
        "t1-l0-s0_1",
        "t1-l1-s0",
    ]
    rows = {r["id"]: r for r in pq.read_table(run_dir / "sft.parquet").to_pylist()}
    ref = {r["id"]: r for r in pq.read_table(resident_dir / "sft.parquet").to_pylist()}
    assert sorted(rows) == sorted(ref)
    for rid, row in rows.items():
        assert [(c["turn"], c["layer"], c["seat"]) for c in row["calls"]] == [
            (c["turn"], c["layer"], c["seat"]) for c in ref[rid]["calls"]
        ]
        # the first proposer prompts depend on the question only: the same as resident
        assert row["calls"][0]["prompt"] == ref[rid]["calls"][0]["prompt"]
        # turn 2's aggregator got turn 2's proposals and turn 1's aggregate as history
        agg2 = json.loads(row["calls"][-1]["prompt"])
        assert agg2[2] == {"role": "assistant", "content": row["messages"][1]["content"]}
        for c in row["calls"][3:5]:
            assert c["text"] in agg2[0]["content"]


@pytest.mark.slow  # one more engine start
def test_layer_by_layer_run_killed_in_its_last_pass_redoes_only_that_pass(layered_run, run_synth):
    run_dir, _ = layered_run
    rows = {r["id"]: r for r in pq.read_table(run_dir / "sft.parquet").to_pylist()}
    # killed during the last pass: the earlier passes are kept, only the last one is redone
    for f in (run_dir / "shards").glob("*.parquet"):
        f.unlink()
    kept = sorted((run_dir / "passes" / "t1-l1-s0" / "shards").glob("*.parquet"))
    kept[0].unlink()
    again = run_synth(run_dir, LAYERED)
    assert again["counts"]["rows_ok"] == 3
    after = {r["id"]: r for r in pq.read_table(run_dir / "sft.parquet").to_pylist()}
    assert sorted(after) == sorted(rows)
    for rid, row in after.items():
        assert row["calls"][:5] == rows[rid]["calls"][:5]  # earlier passes not regenerated
