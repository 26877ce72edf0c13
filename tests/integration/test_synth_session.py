"""Real-stack stage-1 runs on the session's Ray cluster (engines shared across tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED

MT_BENCH = SHARED / "data" / "mt_bench" / "question.jsonl"


@pytest.fixture(scope="module")
def mt_bench_run(run_synth, tmp_path_factory) -> tuple[Path, dict]:
    if not MT_BENCH.exists():
        pytest.skip(f"{MT_BENCH} not available")
    run_dir = tmp_path_factory.mktemp("mt_bench_run")
    manifest = run_synth(
        run_dir,
        [
            "dataset=mt_bench",
            f"dataset.sources.mt_bench.path={MT_BENCH}",
            "limit=3",
            "record_prompts=true",
            "mixture.sampling.max_tokens=96",
            "cluster.batch_size=1",  # one shard per row, so resume has shards to keep and to redo
        ],
    )
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
    again = run_synth(
        run_dir,
        [
            "dataset=mt_bench",
            f"dataset.sources.mt_bench.path={MT_BENCH}",
            "limit=3",
            "record_prompts=true",
            "mixture.sampling.max_tokens=96",
            "cluster.batch_size=1",
        ],
    )
    assert again["counts"]["rows_resumed"] == 3 - len(lost)
    after = pq.read_table(run_dir / "sft.parquet").to_pylist()
    assert sorted(r["id"] for r in after) == sorted(before)  # every id exactly once
    for r in after:
        if r["id"] not in lost:  # kept rows were not generated again
            assert r["calls"] == before[r["id"]]["calls"]
