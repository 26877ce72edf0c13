"""`moaa eval` storage to storage: questions read and checked by Ray Data, outputs written by one
pass over the shards.

The test runs ``evaluate`` whole on real Ray Data, every role (the model and the judge's
models) answering through the ``openai`` backend from the instant stand-in server
(``benchmarks/standin_server.py``): what is under test is the reading, the baseline matching,
resume, the shards and the outputs, not the answers or the verdicts. What the run reports is
checked against the driver-side functions (``load_rows``, ``load_baseline``,
``attach_baseline``) on the same files, and against the shard rows.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from moaa_cluster.data.sources import load_rows
from moaa_cluster.evaluation.answers import attach_baseline, load_baseline, question_sources
from moaa_cluster.evaluation.settings import ProtocolSettings
from moaa_cluster.evaluation.summary import (
    answer_chars,
    compact_row,
    summarize_judgments,
    tally_tokens,
)
from moaa_cluster.pipeline.eval_protocols import attach_mt_bench
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import shard_dir

MODELS = ("smollm2_135m_instruct", "gemma_3_270m")


def driver_questions(sources: list, files: list | None, limit, protocol: ProtocolSettings):
    """What eval's question check gives (lengths aside), computed on the driver with the
    functions ``eval_inputs.QuestionCheck`` applies per batch: ``rows``, ``rejects`` (input,
    no baseline answer, no MT-Bench reference) and ``baseline_rejects``."""
    rows, rejects = load_rows(sources, limit)
    baseline_rejects: list[dict] = []
    if files is not None:
        index, baseline_rejects = load_baseline(files)
        rows, unmatched = attach_baseline(rows, index)
        rejects += unmatched
    else:
        rows = [{**r, "baseline": []} for r in rows]
    if protocol.name == "mt_bench":
        rows, no_reference = attach_mt_bench(rows, sources, protocol.references)
        rejects += no_reference
    return SimpleNamespace(rows=rows, rejects=rejects, baseline_rejects=baseline_rejects)


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _inputs(tmp_path):
    """``question.jsonl``: 5 questions (one of two turns), a malformed line, a repeat of the
    first and a question the baseline does not answer; ``answers.jsonl``: the baseline's
    answers with a line that is not JSON and an unusable (blank) answer."""
    q = [
        {"question_id": 1, "turns": ["Name a fruit."]},
        {"question_id": 2, "turns": ["Say hi.", "Now say bye."]},
        '{"question_id": 3, "turns": ["cut off',
        {"question_id": 1, "turns": ["Name a fruit."]},
        {"question_id": 4, "turns": ["Capital of France?"]},
        {"question_id": 5, "turns": ["Colour of snow?"]},
        {"question_id": 6, "turns": ["2+2?"]},
    ]
    questions = tmp_path / "set" / "question.jsonl"
    questions.parent.mkdir()
    questions.write_text(_lines(*q))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        _lines(
            {"question_id": 1, "choices": [{"turns": ["An apple."]}]},
            "not json",
            {"question_id": 2, "choices": [{"turns": ["Hi!", "Bye!"]}]},
            {"question_id": 7, "answer": "  "},
            {"question_id": 5, "answer": "White."},
            {"question_id": 6, "answer": "Four."},
        )
    )
    return questions, answers


@pytest.fixture(scope="module")
def standin():
    from benchmarks.standin_server import serve

    with serve(tokens=8) as url:
        yield url


def _call(compose, url: str, questions, answers):
    """``evaluate``'s arguments as ``moaa eval`` builds them, every role on the stand-in."""
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.evaluation.settings import Baseline

    over = [
        f"questions={questions}",
        f"baseline_answers={answers}",
        "sampling.max_tokens=8",
        "judge.sampling.max_tokens=8",
        "judge.verdict_sampling.max_tokens=8",
        "resamples=20",
        "++model.backend=openai",
        f"++model.base_url={url}",
    ]
    for m in MODELS:
        over += [f"++judge.models.{m}.backend=openai", f"++judge.models.{m}.base_url={url}"]
    cfg = compose("eval", over)
    judge, judge_specs = build.eval_judge(cfg)
    model = build.model_specs({"model": cfg.model})["model"]
    baseline = Baseline(answers=[str(answers)], name="base")
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    return model, judge, judge_specs, baseline, build.eval_settings(cfg), cluster


def _shards(run_dir) -> list[dict]:
    return pads.dataset(str(shard_dir(run_dir)), format="parquet").to_table().to_pylist()


def test_eval_reads_resumes_and_writes_from_the_shards(tmp_path, compose, ray_local, standin):
    from moaa_cluster.pipeline.evaluate import evaluate

    questions, answers = _inputs(tmp_path)
    sources = question_sources(str(questions))
    want = driver_questions(sources, [str(answers)], None, ProtocolSettings())
    assert len(want.rows) == 4 and len(want.rejects) == 3 and len(want.baseline_rejects) == 2
    model, judge, judge_specs, baseline, settings, cluster = _call(
        compose, standin, questions, answers
    )
    run_dir = tmp_path / "run"

    def run(limit):
        opts = RunOptions(run_dir, cluster, limit=limit, progress=False, keep_engines=True)
        summary = evaluate(sources, model, judge, judge_specs, baseline, settings, opts)
        return summary, json.loads((run_dir / "manifest.json").read_text())

    # the first 3 questions in read order (the third has no baseline answer), then all
    summary, first = run(3)
    assert (summary["evaluated"], summary["failed"], first["counts"]["rows_resumed"]) == (2, 0, 0)
    first_ids = {r["id"] for r in _shards(run_dir)}
    assert first_ids == {r["id"] for r in want.rows[:2]}
    summary, again = run(None)
    c = again["counts"]
    assert (c["evaluated"], c["rows_failed"], c["rows_resumed"], c["rows_retried"]) == (4, 0, 2, 0)
    rows = _shards(run_dir)
    assert sorted(Counter(r["id"] for r in rows).values()) == [1] * 4, "each question once"
    assert {r["id"] for r in rows} == {r["id"] for r in want.rows}

    # the counts and rejects the driver-side reading gives, in its order
    assert summary["questions"] == len(want.rows) + len(want.rejects) == c["questions"]
    assert summary["rejected"] == len(want.rejects) == c["rejects"]
    assert summary["baseline_records_rejected"] == len(want.baseline_rejects)
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    expected = want.rejects + want.baseline_rejects
    assert [r["where"] for r in rejects[:2]] == ["question.jsonl:3", "question.jsonl:4"]
    # the streamed read's duplicate names the row it read, not the raw record (as synth's)
    assert rejects[1]["record"] == {"turns": ["Name a fruit."], "system": None}
    assert [{**r, "record": None} for r in rejects] == [{**r, "record": None} for r in expected]
    assert rejects[:1] + rejects[2:] == expected[:1] + expected[2:]
    assert rejects[2]["reason"].startswith("no baseline answer for question id 4")

    # the outputs: the finished rows by source and id, the single files as their datasets
    by_id = {r["id"]: r for r in rows}
    order = sorted(by_id, key=lambda i: (by_id[i]["source"], i))
    answers_rows = pq.read_table(run_dir / "answers.parquet").to_pylist()
    assert [r["id"] for r in answers_rows] == order
    assert (
        answers_rows
        == pads.dataset(str(run_dir / "answers"), format="parquet")
        .to_table()
        .sort_by([("source", "ascending"), ("id", "ascending")])
        .to_pylist()
    )
    assert all(r["model"] == model.name for r in answers_rows)
    assert [len(r["messages"]) for r in answers_rows] == [2 * len(by_id[i]["turns"]) for i in order]
    judgments = pq.read_table(run_dir / "judgments.parquet").to_pylist()
    assert [r["id"] for r in judgments] == order
    assert [(j["outcome"], j["model_chars"], j["baseline_chars"]) for j in judgments] == [
        (
            by_id[i]["outcome"],
            answer_chars(by_id[i]["model_answers"]),
            answer_chars(by_id[i]["baseline_answers"]),
        )
        for i in order
    ]
    assert len(pads.dataset(str(run_dir / "judgments"), format="parquet").to_table()) == 4
    assert not (run_dir / "baseline_answers.parquet").exists()

    # the summary is the one the full shard rows give
    full = [by_id[i] for i in order]
    judged = summarize_judgments([compact_row(r) for r in full], settings)
    written = json.loads((run_dir / "summary.json").read_text())
    assert json.dumps({k: written[k] for k in judged}) == json.dumps(judged)
    assert summary["tokens_per_model"] == tally_tokens(full, model, None, judge.name)
    assert summary["judge"]["comparisons"] == sum(r["judge_comparisons"] for r in full)
