"""Baseline answer formats, question matching, judge inputs and the eval summary (pure)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.data.sources import load_rows
from moaa_cluster.evaluation.answers import (
    BadAnswer,
    attach_baseline,
    judge_inputs,
    load_baseline,
    parse_answer_record,
    question_sources,
)
from moaa_cluster.evaluation.settings import EvalSettings
from moaa_cluster.evaluation.summary import (
    compact_row,
    format_summary,
    outcome_of,
    summarize_judgments,
)
from tests.conftest import SHARED

ARENA = SHARED / "data" / "arena_hard" / "arena-hard-v0.1"
MT_BENCH = SHARED / "data" / "mt_bench"


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_answer_record_shapes():
    fastchat = {"question_id": 101, "model_id": "gpt-4", "choices": [{"turns": ["a1", "a2"]}]}
    assert parse_answer_record(fastchat, "f:1").answers == ("a1", "a2")
    assert parse_answer_record(fastchat, "f:1").question_id == "101"
    old_arena = {"question_id": "q", "choices": [{"turns": [{"content": "x", "token_len": 1}]}]}
    assert parse_answer_record(old_arena, "f:2").answers == ("x",)
    new_arena = {
        "uid": "u1",
        "model": "gpt-4-0314",
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": {"answer": "A."}},
        ],
    }
    rec = parse_answer_record(new_arena, "f:3")
    assert (rec.answers, rec.question, rec.question_id, rec.model) == (
        ("A.",),
        "Q?",
        "u1",
        "gpt-4-0314",
    )
    alpaca = {"instruction": "Say hi", "output": "hi", "generator": "m"}
    rec = parse_answer_record(alpaca, "f:4")
    assert rec.question_id is None and rec.question == "Say hi" and rec.answers == ("hi",)
    sample = {
        "source_id": "7",
        "prompt": [{"role": "user", "content": "P"}],
        "candidates": ["c0", "c1"],
    }
    assert parse_answer_record(sample, "f:5").answers == ("c0",)
    assert parse_answer_record({"id": "9", "answer": "z"}, "f:6").answers == ("z",)
    for bad, reason in [
        ({"question_id": 1}, "none of"),
        ({"question_id": 1, "answer": "  "}, "empty"),
        ({"answer": "z"}, "no question id"),
        ({"question_id": 1, "choices": []}, "non-empty"),
    ]:
        with pytest.raises(BadAnswer, match=reason):
            parse_answer_record(bad, "f")


def test_baseline_matching_by_id_text_and_turns(tmp_path):
    answers = _jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 1, "choices": [{"turns": ["one"]}]},
            {"question_id": 2, "choices": [{"turns": ["two-a"]}]},  # too few turns for q2
            {"question_id": 1, "choices": [{"turns": ["other"]}]},  # duplicate, different
            {"instruction": "no id here", "output": "by text"},
            {
                "uid": "3",
                "messages": [
                    {"role": "user", "content": "not q3"},
                    {"role": "assistant", "content": "x"},
                ],
            },
            "not json",
        ],
    )
    with open(answers, "a") as fh:
        fh.write("{broken\n")
    index, rejects = load_baseline(answers)
    reasons = [r["reason"] for r in rejects]
    assert any("already answered" in r for r in reasons)
    assert any("malformed JSON" in r for r in reasons)
    assert any("must be an object" in r for r in reasons)
    rows = [
        {"id": "a", "source": "s", "source_id": "1", "turns": ["q1"]},
        {"id": "b", "source": "s", "source_id": "2", "turns": ["q2", "q2b"]},
        {"id": "c", "source": "s", "source_id": None, "turns": ["no id here"]},
        {"id": "d", "source": "s", "source_id": "3", "turns": ["q3"]},
        {"id": "e", "source": "s", "source_id": "4", "turns": ["q4"]},
    ]
    keep, missing = attach_baseline(rows, index)
    assert [(r["id"], r["baseline"]) for r in keep] == [("a", ["one"]), ("c", ["by text"])]
    why = {r["where"]: r["reason"] for r in missing}
    assert "1 turn(s); the question has 2" in why["2"]
    assert "different question" in why["3"]
    assert why["4"].startswith("no baseline answer for question id 4")


def test_baseline_bad_records_are_rejects_not_crashes(tmp_path):
    """Issue #13: each of these lines used to raise out of ``load_baseline``."""
    path = tmp_path / "answers.jsonl"
    path.write_bytes(
        b'{"question_id": 1, "answer": "caf\xe9"}\n'  # 1: invalid UTF-8
        + b"[" * 3000
        + b"]" * 3000
        + b"\n"  # 2: too deep for the parser
        + b'{"question_id": '
        + b"1" * 5000
        + b', "answer": "a"}\n'  # 3: int too long
        + b'{"source_id": 4, "candidates": ["c"], "prompt": "text"}\n'  # 4
        + b'{"source_id": 5, "candidates": ["c"], "prompt": [{"role": "user"}]}\n'  # 5
        + b'{"question_id": 6, "answer": "\\ud800"}\n'  # 6: lone surrogate
        + b'\xef\xbb\xbf{"question_id": 7, "answer": "after a BOM"}\r\n'  # 7: fine
    )
    index, rejects = load_baseline(path)
    assert list(index.by_id) == ["7"] and index.by_id["7"].answers == ("after a BOM",)
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert set(reasons) == {f"answers.jsonl:{i}" for i in range(1, 7)}
    assert reasons["answers.jsonl:1"] == "invalid UTF-8 at byte 33"
    assert reasons["answers.jsonl:4"] == "'prompt' must be a list of {role, content}"
    assert reasons["answers.jsonl:5"] == "prompt[0].content must be a string, got NoneType"
    assert reasons["answers.jsonl:6"] == (
        "unencodable text (lone surrogate U+D800) in answer at char 0"
    )
    assert "RecursionError" in reasons["answers.jsonl:2"]
    assert "ValueError: Exceeds the limit" in reasons["answers.jsonl:3"]
    assert all(r["stage"] == "baseline" for r in rejects)


def test_baseline_unexpected_error_rejects_only_its_record(tmp_path, monkeypatch):
    import moaa_cluster.evaluation.answers as answers_mod

    real = answers_mod.parse_answer_record

    def flaky(rec, where):
        if rec.get("id") == "boom":
            raise AttributeError("bug")
        return real(rec, where)

    monkeypatch.setattr(answers_mod, "parse_answer_record", flaky)
    path = _jsonl(tmp_path / "a.jsonl", [{"id": "boom", "answer": "x"}, {"id": "2", "answer": "y"}])
    index, rejects = load_baseline(path)
    assert list(index.by_id) == ["2"]
    assert rejects == [{"where": "a.jsonl:1", "stage": "baseline", "reason": "AttributeError: bug"}]


def test_question_sources_are_named_by_folder(tmp_path):
    srcs = question_sources([tmp_path / "a" / "question.jsonl", tmp_path / "b" / "question.jsonl"])
    assert [s.name for s in srcs] == ["a/question", "b/question"]
    again = question_sources([tmp_path / "a" / "q.jsonl", tmp_path / "a" / "q.jsonl"])
    assert [s.name for s in again] == ["a/q", "a/q#2"]
    with pytest.raises(ValueError):
        question_sources([])


@pytest.mark.skipif(not ARENA.exists(), reason="shared data not available")
def test_real_arena_hard_and_mt_bench_files_match():
    rows, rejects = load_rows(question_sources(ARENA / "question.jsonl"), limit=20)
    assert not rejects and len(rows) == 20
    index, bad = load_baseline(ARENA / "model_answer" / "gpt-4-0314.jsonl")
    assert not bad and len(index.by_id) == 500
    keep, missing = attach_baseline(rows, index)
    assert len(keep) == 20 and not missing
    mt_rows, _ = load_rows(question_sources(MT_BENCH / "question.jsonl"))
    mt_index, _ = load_baseline(MT_BENCH / "reference_answer" / "gpt-4.jsonl")
    keep, missing = attach_baseline(mt_rows, mt_index)
    assert len(keep) == 30 and len(missing) == 50  # references exist for 101-130 only
    assert all(len(r["baseline"]) == 2 == len(r["turns"]) for r in keep)


def test_our_answers_parquet_is_a_baseline(tmp_path):
    from moaa_cluster.pipeline.eval_outputs import ANSWER_SCHEMA

    row = {
        "id": "h",
        "source": "s",
        "source_id": "42",
        "model": "m",
        "turns": ["q1", "q2"],
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ],
        "completion_tokens": [3, 4],
        "finish_reasons": ["stop", "stop"],
    }
    path = tmp_path / "answers.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=ANSWER_SCHEMA), path)
    index, rejects = load_baseline(path)
    assert not rejects
    keep, _ = attach_baseline(
        [{"id": "x", "source": "s", "source_id": "42", "turns": ["q1", "q2"]}], index
    )
    assert keep[0]["baseline"] == ["a1", "a2"]


def test_judge_inputs_single_and_multi_turn():
    prompt, a, b = judge_inputs(["Q"], "Be brief.", ["mine"], ["theirs"])
    assert prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]
    assert (a, b) == ("mine", "theirs")
    prompt, a, b = judge_inputs(["Q1", "Q2"], None, ["m1", "m2"], ["b1", "b2"])
    assert len(prompt) == 1 and prompt[0]["role"] == "user"
    q = prompt[0]["content"]
    assert "[Turn 1]\nQ1" in q and "[Turn 2]\nQ2" in q
    assert a == "[Turn 1]\nm1\n\n[Turn 2]\nm2" and b == "[Turn 1]\nb1\n\n[Turn 2]\nb2"
    with pytest.raises(ValueError):
        judge_inputs(["Q1", "Q2"], None, ["m1"], ["b1", "b2"])


def test_outcome_mapping():
    assert [outcome_of(o) for o in (0, 1, "tie", "unresolved")] == [
        "win",
        "loss",
        "tie",
        "unresolved",
    ]
    with pytest.raises(ValueError):
        outcome_of(2)


def _row(source, outcome, first, second, m="aaaa", b="bb"):
    cmp = {
        "winner": first,
        "parse": "strict",
        "recovered": False,
        "criteria_fallback": False,
        "calls": 4,
        "prompt_tokens": 100,
        "completion_tokens": 10,
    }
    return {
        "source": source,
        "outcome": outcome,
        "model_answers": [m],
        "baseline_answers": [b],
        "judge": json.dumps({"comparisons": [cmp, {**cmp, "winner": second}]}),
    }


def test_summary_counts_and_judge_rates():
    rows = [
        _row("x", "win", "A", "B"),
        _row("x", "loss", "B", "A"),
        _row("y", "tie", "A", "A"),
        _row("y", "win", "A", "B"),
        _row("y", "unresolved", None, "A"),
        {  # same text on both sides: a tie, never shown to the judge
            "source": "y",
            "outcome": "tie",
            "identical": True,
            "model_answers": ["same"],
            "baseline_answers": ["same"],
            "judge": json.dumps({"comparisons": []}),
        },
    ]
    s = summarize_judgments([compact_row(r) for r in rows], EvalSettings(resamples=200))
    w = s["win_rate"]
    assert (w["n"], w["wins"], w["ties"], w["losses"]) == (5, 2, 2, 1)
    assert w["win_rate"] == pytest.approx(3 / 5)
    assert w["ci_low"] <= 0.6 <= w["ci_high"]
    assert s["identical"] == 1
    assert w["lc_win_rate"] is not None  # all model answers longer: nothing to fit but works
    assert s["by_source"]["x"]["win_rate"] == 0.5
    assert s["by_source"]["y"]["win_rate"] == pytest.approx(2 / 3)
    assert s["unresolved"] == 1
    j = s["judge"]
    assert j["comparisons"] == 10 and j["verdict_unresolved"] == 1
    assert j["position_consistency"] == pytest.approx(3 / 4)
    assert j["first_position_wins"] == pytest.approx(6 / 9)  # A in 6 of 9 resolved verdicts
    table = format_summary({**s, "model": "m", "baseline": "b", "judge_name": "single:x"})
    assert "| all | 5 | 2 | 2 | 1 | 60.0 [" in table
    assert "1 identical answer pair(s) counted as ties" in table
    assert "| x | 2 | 1 | 0 | 1 | 50.0" in table


def test_answers_cut_at_max_tokens_are_counted_per_side_and_said_in_the_table():
    from moaa_cluster.evaluation.summary import truncated_answers

    rows = [
        {"model_finish_reasons": ["stop", "length"], "baseline_finish_reasons": ["stop"]},
        {"model_finish_reasons": ["length"], "baseline_finish_reasons": ["length"]},
        {"model_finish_reasons": ["stop"], "baseline_finish_reasons": None},  # given answers
    ]
    cut = truncated_answers(rows)
    assert cut == {"model": 2, "baseline": 1}
    s = summarize_judgments([], EvalSettings(resamples=0))
    base = {**s, "model": "m", "baseline": "b", "judge_name": "j"}
    assert "truncated:" not in format_summary({**base, "answers_truncated": {"model": 0}})
    table = format_summary({**base, "answers_truncated": cut})
    assert "truncated: 2 model and 1 baseline answers stopped at max_tokens" in table
