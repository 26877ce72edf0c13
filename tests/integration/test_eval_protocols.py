"""The three benchmark protocols on the real stack: SmolLM2 answers, SmolLM2 judges alone.

A few questions each (scores of a 135M judge mean nothing: the machinery is what is tested):
AlpacaEval 2 reads the judge's first-token logprobs from the engine, Arena-Hard plays both
orders with 5-level verdicts, MT-Bench grades two turns against GPT-4's reference answers.
Every verdict or grade either parses or is counted as unreadable; none is scored silently.
In-process on the session's Ray cluster; the one SmolLM2 engine serves both roles and stays
up for the next test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED

ARENA = SHARED / "data" / "arena_hard" / "arena-hard-v0.1"
MT_BENCH = SHARED / "data" / "mt_bench"
ARENA_IDS = ["b73a766af676460dabf4a58788c10b29", "328c149ed45a41c0b9d6f14659e63599"]
MT_IDS = [101, 81]  # reasoning (graded against the reference answer), writing (no reference)

pytestmark = pytest.mark.skipif(not ARENA.exists(), reason="shared data missing")


def _pick(src: Path, dst: Path, key: str, ids: list) -> Path:
    records = {json.loads(line)[key]: line for line in src.read_text().splitlines()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(records[i] + "\n" for i in ids))
    return dst


@pytest.fixture(scope="module")
def run_eval(compose, models_dir, ray_session):
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.evaluation.answers import question_sources
    from moaa_cluster.evaluation.settings import Baseline
    from moaa_cluster.pipeline.evaluate import evaluate
    from moaa_cluster.runs.options import RunOptions

    def _run(run_dir: Path | str, overrides: list[str]) -> dict:
        cfg = compose("eval", [f"models_dir={models_dir}", "sampling.max_tokens=48", *overrides])
        plain = OmegaConf.to_container(cfg, resolve=True)
        judge, judge_specs = build.eval_judge(cfg)
        opts = RunOptions(run_dir, plain["cluster"], progress=False, keep_engines=True)
        baseline = Baseline(answers=plain["baseline_answers"], name=cfg.baseline_name)
        model = build.model_specs({"model": cfg.model})["model"]
        settings = build.eval_settings(cfg)
        sources = question_sources(plain["questions"])
        return evaluate(sources, model, judge, judge_specs, baseline, settings, opts)

    return _run


def _judgments(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "judgments.parquet").to_pylist()


def _judgments_s3(s3, run_dir: str) -> list[dict]:
    return pq.read_table(s3.key(f"{run_dir}/judgments.parquet"), filesystem=s3.fs).to_pylist()


def test_alpaca_eval2_reads_the_preference_from_the_engines_logprobs(run_eval, tmp_path, s3):
    """Its run directory is on the session's S3-compatible server (moto)."""
    q = _pick(ARENA / "question.jsonl", tmp_path / "q.jsonl", "uid", ARENA_IDS)
    answers = ARENA / "model_answer" / "gpt-4-0314.jsonl"
    run_dir = s3.uri("eval-alpaca")
    s = run_eval(
        run_dir,
        [
            "protocol=alpaca_eval2",
            f"questions={q}",
            f"baseline_answers={answers}",
            "baseline_name=gpt-4-0314",
            "protocol.model_position=random",
        ],
    )
    p = s["protocol"]
    # the judge config recovers: an answer naming neither m nor M is asked again, decoding
    # constrained to the two identifiers, so every question ends up read
    assert s["evaluated"] == 2 and (p["judged"], p["unparsed"]) == (2, 0)
    assert json.loads(s3.read(f"{run_dir}/summary.json")) == json.loads(json.dumps(s, default=str))
    rows = _judgments_s3(s3, run_dir)
    assert len(rows) == 2 and s3.exists(f"{run_dir}/answers.parquet")
    for r in rows:
        detail = json.loads(r["judge"])
        assert detail["top"], "the engine returned no top logprobs"  # logprobs reached us
        assert detail["model_position"] in ("m", "M")
        assert 0.0 <= r["preference"] <= 1.0 and r["protocol"] == "alpaca_eval2"
        if detail["read_from"].startswith("recovered"):
            assert r["judge_calls"] == 2 and detail["recovery"]["text"] in ("m", "M")
        else:
            assert r["judge_calls"] == 1 and detail["read_from"] in ("logprobs", "text")
    assert p["recovered"] == sum(
        json.loads(r["judge"])["read_from"].startswith("recovered") for r in rows
    )
    assert s["judge_name"] == "single:smollm2_135m_instruct"


def test_arena_hard_plays_both_orders_and_counts_unparsed_verdicts(run_eval, tmp_path):
    q = _pick(ARENA / "question.jsonl", tmp_path / "q.jsonl", "uid", ARENA_IDS)
    answers = ARENA / "model_answer" / "gpt-4-0314.jsonl"
    s = run_eval(
        tmp_path / "run",
        [
            "protocol=arena_hard",
            f"questions={q}",
            f"baseline_answers={answers}",
            "baseline_name=gpt-4-0314",
            "protocol.judge_max_tokens=96",
        ],
    )
    p = s["protocol"]
    assert p["games"] == 4
    rows = _judgments(tmp_path / "run")
    outcomes = [o for r in rows for o in r["game_outcomes"]]
    assert sum(o is None for o in outcomes) == p["games_unparsed"]
    assert p["questions"] == sum(None not in r["game_outcomes"] for r in rows)
    games = [g for r in rows for g in json.loads(r["judge"])["games"]]
    assert [g["model_side"] for g in games] == ["B", "A"] * 2  # baseline first, then model


def test_mt_bench_grades_two_turns_with_references_for_reasoning(run_eval, tmp_path):
    q = _pick(
        MT_BENCH / "question.jsonl", tmp_path / "mt" / "question.jsonl", "question_id", MT_IDS
    )
    refs = MT_BENCH / "reference_answer" / "gpt-4.jsonl"
    s = run_eval(
        tmp_path / "run",
        [
            "protocol=mt_bench",
            f"questions={q}",
            f"protocol.references={refs}",
            "protocol.judge_max_tokens=96",
        ],
    )
    p = s["protocol"]
    assert s["baseline"] is None and s["evaluated"] == 2
    assert p["scored"] + p["unparsed"] == 4  # two turns of two questions
    rows = {r["source_id"]: r for r in _judgments(tmp_path / "run")}
    assert rows["101"]["category"] == "reasoning" and rows["81"]["category"] == "writing"
    assert all(g is None or 1 <= g <= 10 for r in rows.values() for g in r["grades"])
    judged = json.loads(rows["101"]["judge"])["turns"]
    assert len(judged) == 2 and all(isinstance(t["text"], str) for t in judged)
