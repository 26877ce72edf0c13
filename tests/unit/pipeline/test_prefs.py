"""Stage 2 with candidates cut off at ``max_tokens``: flagged, never chosen by default, counted.

A fake sampler answers each candidate seed with a fixed text and finish reason; a fake judge
prefers the higher ``q=`` in both orders. The rows go through ``PrefsWorker`` and the shards
through ``write_outputs`` exactly as a run would, without engines.
"""

from __future__ import annotations

import asyncio
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.engines.backends import Completion
from moaa_cluster.errors import ConfigError
from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.judge.prompts import JUDGE_AGGREGATOR
from moaa_cluster.pipeline.prefs import SAMPLER, PrefsSettings, PrefsWorker, candidate_seed
from moaa_cluster.pipeline.prefs_outputs import SHARD_SCHEMA, summary_text, write_outputs
from moaa_cluster.runs.shards import shard_dir

K4_OPENING = JUDGE_AGGREGATOR.split("\n", 1)[0]
JUDGE = JudgeSpec(name="fake", proposers=("judge",), aggregator="judge", seed=0)


class FakeSampler:
    """Candidate k of a row answers ``answers[row id][k]``: ``(quality, finish_reason)``."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]], seed: int = 0):
        self.by_seed = {
            candidate_seed(seed, row_id, k): (f"answer {row_id} q={q}", finish)
            for row_id, cands in answers.items()
            for k, (q, finish) in enumerate(cands)
        }

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        text, finish = self.by_seed[sampling["seed"]]
        return Completion(text, 5, 160 if finish == "length" else 40, finish, "sampler")


class FakeJudge:
    """Prefers the higher ``q=`` in every order; counts its calls."""

    calls = 0

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        self.calls += 1
        text = messages[-1]["content"]
        if not text.startswith(K4_OPENING):
            return Completion(
                "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity", 9, 9, "stop", "j"
            )
        a, b = (
            int(re.search(r"q=(\d+)", text.split(f"Assistant {s} response:", 1)[1]).group(1))
            for s in "AB"
        )
        return Completion("[[A]]" if a > b else "[[B]]", 9, 1, "stop", "j")


def run_rows(answers: dict, settings: PrefsSettings) -> tuple[list[dict], FakeJudge]:
    worker = PrefsWorker.__new__(PrefsWorker)  # no engines: the backends are the fakes
    judge = FakeJudge()
    worker.judge, worker.settings = JUDGE, settings
    worker.backends = {SAMPLER: FakeSampler(answers), "judge": judge}
    rows = [
        {"id": rid, "source": "t", "source_id": rid, "system": None, "turns": [f"q {rid}"]}
        for rid in answers
    ]

    async def all_rows():
        return await asyncio.gather(*(worker._one(r) for r in rows))

    return asyncio.run(all_rows()), judge


STOP, LENGTH = "stop", "length"
BEST_CUT = [(3, STOP), (1, STOP), (4, LENGTH), (0, STOP), (2, STOP)]  # the best is cut off


def test_truncated_candidate_is_flagged_and_never_chosen_by_default():
    assert PrefsSettings().truncated == "exclude_from_chosen"
    (out,), _ = run_rows({"r": BEST_CUT}, PrefsSettings())
    assert out["error"] is None and out["status"] == "ok"
    assert out["candidate_truncated"] == [False, False, True, False, False]
    assert out["candidate_finish_reasons"] == ["stop", "stop", "length", "stop", "stop"]
    assert out["scores"][2] == max(out["scores"])  # the judge still ranks it best
    assert (out["chosen_index"], out["rejected_index"]) == (0, 3)  # the best uncut one
    assert out["chosen"][0]["content"] == "answer r q=3"


def test_truncated_candidate_is_chosen_when_allowed():
    (out,), _ = run_rows({"r": BEST_CUT}, PrefsSettings(truncated="allow"))
    assert (out["status"], out["chosen_index"], out["rejected_index"]) == ("ok", 2, 3)


def test_truncated_candidate_may_be_rejected():
    worst_cut = [(3, STOP), (1, STOP), (4, STOP), (0, LENGTH), (2, STOP)]
    (out,), _ = run_rows({"r": worst_cut}, PrefsSettings())
    assert (out["status"], out["chosen_index"], out["rejected_index"]) == ("ok", 2, 3)


def test_rows_without_an_eligible_chosen_are_skips_with_a_reason():
    answers = {
        "all": [(1, LENGTH), (2, LENGTH), (3, LENGTH)],
        "pref": [(1, STOP), (2, LENGTH), (1, STOP)],  # only the cut one beats the worst
    }
    outs, judge = run_rows(answers, PrefsSettings(num_candidates=3))
    by_id = {o["id"]: o for o in outs}
    assert by_id["all"]["status"] == "all_truncated"
    assert by_id["all"].get("judge") is None  # nothing can be chosen: not judged
    assert by_id["pref"]["status"] == "truncated_preferred"
    assert by_id["pref"]["scores"] == [0.5, 2.0, 0.5]
    assert judge.calls == 3 * (1 + 2 * 2)  # only "pref": 3 pairs x (criteria + 2 x 2)
    # allowed, the same rows are judged and paired
    outs, _ = run_rows(answers, PrefsSettings(num_candidates=3, truncated="allow"))
    assert [o["status"] for o in outs] == ["ok", "ok"]
    assert outs[1]["chosen_index"] == 1


def test_unknown_truncated_policy_is_refused():
    with pytest.raises(ConfigError, match="exclude_from_chosen"):
        PrefsSettings(truncated="drop")


def write_shards(run_dir, outs: list[dict]) -> None:
    shard_dir(run_dir).mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(outs, schema=SHARD_SCHEMA), shard_dir(run_dir) / "0.parquet"
    )


def test_outputs_carry_the_flags_and_the_counts_and_skips_are_recorded(tmp_path, ray_local):
    answers = {
        "a": BEST_CUT,
        "b": [(3, STOP), (1, STOP), (4, STOP), (0, LENGTH), (2, STOP)],
        "c": [(1, LENGTH), (2, LENGTH), (3, LENGTH), (4, LENGTH), (5, LENGTH)],
        "d": [(1, STOP), (9, LENGTH), (1, STOP), (1, STOP), (1, STOP)],
    }
    settings = PrefsSettings()
    outs, _ = run_rows(answers, settings)
    write_shards(tmp_path, outs)
    counts = write_outputs(tmp_path)
    assert counts["pairs"] == 2
    assert counts["skipped_all_truncated"] == 1 and counts["skipped_truncated_preferred"] == 1
    assert counts["candidates"] == 20 and counts["candidates_truncated"] == 1 + 1 + 5 + 1
    assert counts["pairs_chosen_truncated"] == 0
    assert counts["pairs_rejected_truncated"] == 1  # row b's worst was cut off
    assert counts["judge"]["comparisons"] == 3 * 20  # a, b, d judged; c not
    rows = pq.read_table(tmp_path / "prefs.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["candidate_truncated"] == [False, False, True, False, False]
    assert rows[1]["candidate_finish_reasons"][3] == "length"
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert {r["where"]: r["record"]["status"] for r in rejects} == {
        "c": "all_truncated",
        "d": "truncated_preferred",
    }
    assert all("finish_reason: length" in r["reason"] for r in rejects)
    text = summary_text(counts, {"total": 1.0}, tmp_path, settings, sampled_only=False)
    assert "1 all truncated, 1 only truncated preferred" in text
    assert "8 of 20 candidates" in text and "0 chosen, 1 rejected" in text


def test_outputs_over_many_shards_a_failure_retried_to_success_and_a_second_write(
    tmp_path, ray_local
):
    """Stage 2's Ray Data outputs: pairs from every shard, sorted, in ``prefs/`` and
    ``prefs.parquet``; a row that failed and later finished is a pair, not a reject; the
    skipped rows' reject parts are written once however often the outputs are."""
    import datasets

    from moaa_cluster.runs.shards import write_shard

    answers = {f"r{i}": [(i % 4, STOP), ((i + 1) % 4, STOP), (9, STOP)] for i in range(12)}
    answers["same"] = [(1, STOP)] * 3  # identical candidates: a skip
    settings = PrefsSettings(num_candidates=3)
    outs, _ = run_rows(answers, settings)
    failed = {**outs[0], "status": None, "error": "EngineDead: gone", "finished_at": 0.5}
    failed_never = {**outs[1], "id": "lost", "status": None, "error": "TimeoutError: slow"}
    for i in range(0, len(outs), 3):  # one shard a block of 3, as workers write them
        write_shard(tmp_path, pa.Table.from_pylist(outs[i : i + 3], schema=SHARD_SCHEMA))
    write_shard(tmp_path, pa.Table.from_pylist([failed, failed_never], schema=SHARD_SCHEMA))

    for _ in range(2):  # a rerun with nothing left to do writes the same outputs again
        counts = write_outputs(tmp_path)
    assert counts["pairs"] == 12 and counts["skipped_identical"] == 1
    assert counts["rows_failed"] == 1 and counts["rejects_input"] == 0
    assert counts["judge"]["comparisons"] == 12 * 3 * 2
    single = pq.read_table(tmp_path / "prefs.parquet")
    ids = single["id"].to_pylist()
    assert ids == sorted(f"r{i}" for i in range(12))
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "prefs"), split="train")
    assert loaded["id"] == ids
    assert loaded[0]["chosen"] == single.slice(0, 1).to_pylist()[0]["chosen"]
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["where"], r["stage"]) for r in rejects] == [("same", "prefs"), ("lost", "inference")]
    assert "candidates.parquet" not in {p.name for p in tmp_path.iterdir()}

    sampled = write_outputs(tmp_path, sample_only=True)  # `moaa sample` writes candidates/
    assert sampled["pairs"] == 12 and (tmp_path / "candidates.parquet").exists()
    assert pq.read_table(tmp_path / "prefs.parquet").num_rows == 0
