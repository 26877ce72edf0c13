"""`moaa eval` then `moaa report`, through the real CLI on the real stack.

The packaged SmolLM2 answers 3 Arena-Hard questions and 2 two-turn MT-Bench questions; the
baselines are the real GPT-4-0314 Arena-Hard answers and GPT-4 MT-Bench reference answers;
SmolLM2 alone judges (the single-judge path), both orders. One more question of each set
must be rejected before any engine starts: one too long for the 2048-token context, one
without a reference answer. Its own process and local Ray, like the CLI sweep test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moaa_cluster.evaluation.summary import outcome_of
from moaa_cluster.evaluation.winrate import win_rate
from moaa_cluster.judge.ranking import combine_orders
from tests.conftest import SHARED

ARENA = SHARED / "data" / "arena_hard" / "arena-hard-v0.1"
MT_BENCH = SHARED / "data" / "mt_bench"
# short questions whose GPT-4 answers leave room for the judge prompt in 2048 tokens
ARENA_IDS = [
    "b73a766af676460dabf4a58788c10b29",
    "328c149ed45a41c0b9d6f14659e63599",
    "38506f6f76c34b8ab8aec6223eee2548",
]
ARENA_TOO_LONG = "ee9ae71956724d4591d4d9bc457d598d"
MT_IDS = [101, 104]  # reasoning questions with GPT-4 reference answers
MT_NO_REFERENCE = 81
MAX_TOKENS = 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pick(src: Path, dst: Path, key: str, ids: list) -> None:
    records = {}
    for line in src.read_text().splitlines():
        rec = json.loads(line)
        records[rec[key]] = line
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(records[i] + "\n" for i in ids))


def _moaa(args: list[str], models_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [sys.executable, "-m", "moaa_cluster.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(not ARENA.exists() or not MT_BENCH.exists(), reason="shared data missing")
def test_eval_vs_gpt4_answers_then_report(tmp_path: Path, models_dir: Path):
    arena_q = tmp_path / "arena-hard-v0.1" / "question.jsonl"
    mt_q = tmp_path / "mt_bench" / "question.jsonl"
    _pick(ARENA / "question.jsonl", arena_q, "uid", [*ARENA_IDS, ARENA_TOO_LONG])
    _pick(MT_BENCH / "question.jsonl", mt_q, "question_id", [*MT_IDS, MT_NO_REFERENCE])
    out_root = tmp_path / "outputs"
    args = [
        "eval",
        f"questions=['{arena_q}','{mt_q}']",
        f"baseline_answers=['{ARENA / 'model_answer' / 'gpt-4-0314.jsonl'}',"
        f"'{MT_BENCH / 'reference_answer' / 'gpt-4.jsonl'}']",
        "baseline_name=gpt-4",
        "single_judge=smollm2_135m_instruct",
        f"sampling.max_tokens={MAX_TOKENS}",
        "judge.sampling.max_tokens=64",
        "judge.verdict_sampling.max_tokens=96",
        "resamples=300",
        f"output_root={out_root}",
        "progress=false",
    ]
    proc = _moaa(args, models_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = out_root / "eval-smollm2-135m-instruct-vs-gpt-4-single-smollm2_135m_instruct"
    assert "| all | " in proc.stdout and "| mt_bench/question | " in proc.stdout, proc.stdout

    # --- answers: every question, every turn, with the model's own history ------------
    answers = {r["source_id"]: r for r in pq.read_table(run_dir / "answers.parquet").to_pylist()}
    assert sorted(answers) == sorted([*ARENA_IDS, *map(str, MT_IDS)])
    for sid, r in answers.items():
        n_turns = 2 if sid in map(str, MT_IDS) else 1
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * n_turns
        assert all(m["content"].strip() for m in r["messages"])
        assert [m["content"] for m in r["messages"] if m["role"] == "user"] == r["turns"]
        assert len(r["completion_tokens"]) == n_turns
        assert all(0 < t <= MAX_TOKENS for t in r["completion_tokens"])
        assert r["model"] == "smollm2-135m-instruct"
        if n_turns == 2:  # turn 2's prompt holds turn 1's question, answer and turn 2
            assert r["prompt_tokens"][1] > r["prompt_tokens"][0] + r["completion_tokens"][0]

    # --- judgments: both orders each, outcome follows from the two verdicts ----------
    judgments = pq.read_table(run_dir / "judgments.parquet").to_pylist()
    assert len(judgments) == 5
    baseline_refs = {
        json.loads(x)["question_id"]: json.loads(x)["choices"][0]["turns"]
        for x in (MT_BENCH / "reference_answer" / "gpt-4.jsonl").read_text().splitlines()
    }
    for j in judgments:
        cmps = json.loads(j["judge"])["comparisons"]
        assert [(c["a"], c["b"]) for c in cmps] == [(0, 1), (1, 0)]  # model first, then second
        assert j["verdict_model_first"] == cmps[0]["winner"]
        assert j["verdict_baseline_first"] == cmps[1]["winner"]
        expected = outcome_of(
            combine_orders(0, 1, j["verdict_model_first"], j["verdict_baseline_first"]).outcome
        )
        assert j["outcome"] == expected
        for c in cmps:
            assert len(c["criteria"]) == 3
            assert [k["model"] for k in c["critiques"]] == ["smollm2-135m-instruct"]
            # criteria (once per pair, counted in the first order) + critique + verdict
            # [+ recovery]
            own = 3 if c["criteria_call"] else 2
            assert c["calls"] == own + (1 if c["parse"] in ("none", "both") else 0)
        assert [c["criteria_call"] for c in cmps] == [True, False]
        assert cmps[0]["criteria"] == cmps[1]["criteria"]
        assert j["judge_comparisons"] == 2
        assert j["model_chars"] == sum(len(a) for a in _answer_texts(answers[j["source_id"]]))
        if j["turns"] == 2:  # judged on the full conversation: GPT-4's two turns, labelled
            ref = baseline_refs[int(j["source_id"])]
            assert j["baseline_chars"] == len(ref[0]) + len(ref[1])

    # --- summary: the numbers recomputed from the judgments ----------------------------
    summary = json.loads((run_dir / "summary.json").read_text())
    judged = [j for j in judgments if j["outcome"] != "unresolved"]
    again = win_rate(
        [j["outcome"] for j in judged],
        model_lengths=[j["model_chars"] for j in judged],
        baseline_lengths=[j["baseline_chars"] for j in judged],
        resamples=300,
        seed=0,
    )
    assert summary["win_rate"] == again.as_dict()
    w = summary["win_rate"]
    assert w["wins"] + w["ties"] + w["losses"] == w["n"] == len(judged)
    assert summary["unresolved"] == len(judgments) - len(judged)
    assert w["win_rate"] == pytest.approx((w["wins"] + w["ties"] / 2) / w["n"])
    assert w["ci_low"] <= w["win_rate"] <= w["ci_high"]
    by_source = summary["by_source"]
    assert (
        by_source["mt_bench/question"]["n"] + by_source["arena-hard-v0.1/question"]["n"] == w["n"]
    )
    j = summary["judge"]
    assert j["comparisons"] == 10
    decided = sum(x["outcome"] in ("win", "loss") for x in judged)
    assert j["position_consistency"] == pytest.approx(decided / len(judged))
    tokens = summary["tokens_per_model"]["smollm2-135m-instruct"]
    assert tokens["calls"] == 3 + 2 * 2
    assert tokens["completion_tokens"] == sum(sum(r["completion_tokens"]) for r in answers.values())
    judge_tokens = summary["tokens_per_model"]["judge:single:smollm2_135m_instruct"]
    assert judge_tokens["calls"] == j["calls"] == sum(x["judge_calls"] for x in judgments)

    # --- rejects: each unusable question with its reason, before any inference -------
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert set(reasons) == {str(MT_NO_REFERENCE), ARENA_TOO_LONG}
    assert reasons[str(MT_NO_REFERENCE)].startswith("no baseline answer for question id 81")
    assert "too long for smollm2-135m-instruct" in reasons[ARENA_TOO_LONG]
    assert summary["questions"] == 7 and summary["rejected"] == 2 and summary["evaluated"] == 5

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["task"] == "eval" and manifest["status"] == "complete"
    assert manifest["timings_s"]["engine_start"] > 0
    assert manifest["summary"]["win_rate"] == summary["win_rate"]

    # --- rerun: everything is done, nothing is generated again --------------------------
    rerun = _moaa(args, models_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again_manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "engine_start" not in again_manifest["last_invocation_s"]  # nothing started
    # timings add up over invocations: the first run's engine start and inference remain
    for phase in ("engine_start", "answer_and_judge"):
        assert again_manifest["timings_s"][phase] == manifest["timings_s"][phase]
    assert again_manifest["timings_s"]["total"] > manifest["timings_s"]["total"]
    assert pq.read_table(run_dir / "judgments.parquet").to_pylist() == judgments

    # --- report on that run dir: a page, valid PNGs, costs from the same numbers ------
    rep = _moaa(["report", str(run_dir)], models_dir, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (run_dir / "report.md").read_text()
    for name in ("timings", "tokens", "throughput", "judge", "win_rates"):
        png = run_dir / "plots" / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"(plots/{name}.png)" in text
    assert "Scores of chosen vs rejected: skipped" in text  # no preference pairs in an eval
    assert (
        f"| eval | smollm2-135m-instruct | {tokens['calls']} | "
        f"{tokens['prompt_tokens']:,} | {tokens['completion_tokens']:,} |"
    ) in text
    assert f"| all | {w['n']} | {w['wins']} | {w['ties']} | {w['losses']} |" in text


def _answer_texts(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]
