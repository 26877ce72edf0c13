"""The benchmark protocols' judging of one question and their summaries (pure, fake judge)."""

import asyncio
import json
import math

import pytest

from moaa_cluster.data.sources import Source
from moaa_cluster.engines.backends import Completion
from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocol_summary import format_protocol
from moaa_cluster.evaluation.protocol_summary import protocol_summary as _summary
from moaa_cluster.evaluation.settings import EvalSettings, ProtocolSettings
from moaa_cluster.evaluation.summary import compact_row
from moaa_cluster.pipeline.eval_protocols import (
    attach_mt_bench,
    grade_mt_bench,
    judge_alpaca,
    judge_arena,
)


class Judge:
    """Answers each call with the next scripted text (and top logprobs, if given)."""

    def __init__(self, texts, top=None):
        self.texts, self.top, self.calls = list(texts), top, []

    async def chat(self, messages, sampling):
        self.calls.append((messages, sampling))
        return Completion(self.texts.pop(0), 100, 3, "stop", "judge", top_logprobs=self.top)


def run(coro):
    return asyncio.run(coro)


def test_alpaca_reads_the_models_preference_from_the_logprobs_reference_first():
    top = [[{"token": "M", "logprob": math.log(0.75)}, {"token": "m", "logprob": math.log(0.25)}]]
    judge = Judge(["M"], top)
    out = run(
        judge_alpaca(
            judge, "q?", "model says", "reference says", ProtocolSettings("alpaca_eval2"), "7"
        )
    )
    assert out["preference"] == pytest.approx(0.75) and out["outcome"] == "win"
    messages, sampling = judge.calls[0]
    user = messages[1]["content"]
    assert user.index("reference says") < user.index("model says")  # output_1 = reference
    assert sampling["max_tokens"] == 1 and sampling["logprobs"] and sampling["top_logprobs"] == 5
    assert json.loads(out["judge"])["read_from"] == "logprobs"
    assert (out["judge_calls"], out["judge_prompt_tokens"]) == (1, 100)


def test_alpaca_falls_back_to_the_text_and_counts_an_unreadable_answer():
    ps = ProtocolSettings("alpaca_eval2", model_position="random", seed=3)
    out = run(judge_alpaca(Judge(["m"]), "q", "a", "b", ps, "11"))
    position = json.loads(out["judge"])["model_position"]
    assert out["preference"] == (1.0 if position == "m" else 0.0)
    assert json.loads(out["judge"])["read_from"] == "text"
    bad = run(judge_alpaca(Judge(["The first one"]), "q", "a", "b", ps, "11"))
    assert bad["preference"] is None and bad["outcome"] is None


def test_alpaca_asks_again_constrained_to_the_identifiers_only_when_the_judge_recovers():
    # the packaged 270M judge's first token is "You"/"The"/"{": neither identifier
    top = [[{"token": "You", "logprob": -0.7}, {"token": "The", "logprob": -3.5}]]
    ps = ProtocolSettings("alpaca_eval2")  # reference first: the model is "M"
    plain = Judge(["You"], top)
    assert run(judge_alpaca(plain, "q", "a", "b", ps, "5"))["preference"] is None
    assert len(plain.calls) == 1  # recover off (the default): counted unreadable, no re-ask

    class Recovering(Judge):
        async def chat(self, messages, sampling):
            c = await super().chat(messages, sampling)
            if "structured_outputs" in sampling:  # the constrained re-ask: m/M only
                c.top_logprobs = [[{"token": "M", "logprob": math.log(0.6)}]]
            return c

    judge = Recovering(["You", "M"], top)
    out = run(judge_alpaca(judge, "q", "a", "b", ps, "5", recover=True))
    (first_msgs, first), (again_msgs, again) = judge.calls
    assert "structured_outputs" not in first and again["structured_outputs"] == {
        "choice": ["m", "M"]
    }
    assert again_msgs == first_msgs and again["max_tokens"] == 1
    record = json.loads(out["judge"])
    assert out["preference"] == 1.0 and out["outcome"] == "win"  # only M in the masked top
    assert record["read_from"] == "recovered_logprobs" and record["recovery"]["text"] == "M"
    assert out["judge_calls"] == 2
    # a readable first answer is never asked again
    once = Judge(["m"], [[{"token": "m", "logprob": -0.1}]])
    assert run(judge_alpaca(once, "q", "a", "b", ps, "5", recover=True))["preference"] == 0.0
    assert len(once.calls) == 1


def test_arena_plays_both_orders_and_reads_the_models_outcomes():
    # game 1: baseline is A, the judge says B (the model) is much better; game 2: model is A
    judge = Judge(["... [[B>>A]]", "My final verdict is tie: [[A=B]]"])
    ps = ProtocolSettings("arena_hard", judge_max_tokens=300)
    out = run(judge_arena(judge, "q", "MODEL", "BASE", ps, "u1"))
    assert out["game_outcomes"] == ["strong_win", "tie"] and out["outcome"] == "win"
    first, second = (m[1]["content"] for m, _ in judge.calls)
    assert first.index("BASE") < first.index("MODEL") and second.index("MODEL") < second.index(
        "BASE"
    )
    assert all(s["max_tokens"] == 300 and s["temperature"] == 0.0 for _, s in judge.calls)
    unparsed = run(judge_arena(Judge(["no verdict", "[[A>B]]"]), "q", "M", "B", ps, "u1"))
    assert unparsed["game_outcomes"] == [None, "win"] and unparsed["outcome"] == "unresolved"


def test_mt_bench_grades_each_turn_against_the_reference_when_the_category_needs_one():
    row = {
        "id": "r",
        "source_id": "101",
        "turns": ["2+2?", "times 3?"],
        "category": "math",
        "reference": ["4", "12"],
    }
    judge = Judge(["Rating: [[9]]", "Rating: [[11]]"])
    out = run(grade_mt_bench(judge, row, ["4", "12"], ProtocolSettings("mt_bench"), "101"))
    assert out["grades"] == [9.0, None]  # 11 is out of range: counted, not scored
    first_turn = judge.calls[0][0][1]["content"]
    assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in first_turn
    assert out["category"] == "math" and out["outcome"] is None


def test_mt_bench_questions_get_categories_and_reference_less_math_is_rejected(tmp_path):
    q = tmp_path / "question.jsonl"
    q.write_text(
        "\n".join(
            json.dumps({"question_id": i, "category": c, "turns": [f"q{i}", f"f{i}"]})
            for i, c in ((1, "writing"), (2, "math"), (3, "coding"))
        )
    )
    ref = tmp_path / "ref.jsonl"
    ref.write_text(json.dumps({"question_id": 2, "choices": [{"turns": ["r1", "r2"]}]}))
    rows = [
        {"id": f"x{i}", "source": "mt", "source_id": str(i), "turns": ["q", "f"]} for i in (1, 2, 3)
    ]
    kept, rejects = attach_mt_bench(rows, [Source("mt", path=str(q))], str(ref))
    assert [(r["source_id"], r["category"], r["reference"]) for r in kept] == [
        ("1", "writing", None),
        ("2", "math", ["r1", "r2"]),
    ]
    assert len(rejects) == 1 and "coding question against a reference" in rejects[0]["reason"]


def protocol_summary(rows: list[dict], *args) -> dict:
    """The protocol's summary of finished rows, as eval computes it (their compact records)."""
    return _summary([compact_row(r) for r in rows], *args)


def _settings(name: str, **kw) -> EvalSettings:
    return EvalSettings(resamples=50, protocol=ProtocolSettings(name, **kw))


def test_summaries_count_what_could_not_be_read_and_score_the_rest():
    rows = [
        {"preference": 1.0, "model_answers": ["aa"], "baseline_answers": ["b"]},
        {"preference": 0.5, "model_answers": ["a"], "baseline_answers": ["bb"]},
        {"preference": 0.0, "model_answers": ["a"], "baseline_answers": ["b"]},
        {"preference": None, "model_answers": ["a"], "baseline_answers": ["b"]},
    ]
    rows[0]["judge"] = json.dumps({"read_from": "recovered_text"})
    rows[1]["judge"] = json.dumps({"read_from": "logprobs"})
    a = protocol_summary(rows, _settings("alpaca_eval2"), "m", "ref")
    assert (a["judged"], a["unparsed"]) == (3, 1) and a["win_rate"] == pytest.approx(50.0)
    assert a["recovered"] == 1
    line = format_protocol({"model": "m", "baseline": "ref", "judge_name": "j", "protocol": a})
    assert "1 unreadable" in line and "1 of the judged read only when asked again" in line
    assert a["headline"]["metric"] == "LC win rate" and a["headline"]["value"] is not None

    arena_rows = [
        {"game_outcomes": ["win", "win"], "model_answers": ["a"], "baseline_answers": ["b"]},
        {"game_outcomes": ["loss", None], "model_answers": ["a"], "baseline_answers": ["b"]},
        {"game_outcomes": ["tie", "loss"], "model_answers": ["a"], "baseline_answers": ["b"]},
    ]
    h = protocol_summary(arena_rows, _settings("arena_hard"), "m", "gpt-4-0314")
    assert (h["questions"], h["games"], h["games_unparsed"]) == (2, 6, 1)
    # weighted wins 2.5 of 4 games (a tie counts half): BT win rate = 62.5%
    assert h["headline"]["value"] == pytest.approx(62.5, abs=1e-3)

    mt_rows = [
        {"id": "1", "source_id": "1", "category": "writing", "grades": [8.0, 6.0]},
        {"id": "2", "source_id": "2", "category": "math", "grades": [None, 3.0]},
    ]
    m = protocol_summary(mt_rows, _settings("mt_bench"), "m", None)
    assert m["headline"]["value"] == pytest.approx(17 / 3) and m["unparsed"] == 1
    text = format_protocol(
        {"model": "m", "baseline": None, "judge_name": "single:j", "protocol": m}
    )
    assert "mt_bench" in text and "1 unreadable, not scored" in text and "vs" not in text


def test_an_unknown_protocol_or_position_is_a_config_error():
    with pytest.raises(ConfigError, match="not one of"):
        ProtocolSettings("alpaca_eval")
    with pytest.raises(ConfigError, match="model_position"):
        ProtocolSettings("alpaca_eval2", model_position="first")
    assert not ProtocolSettings("mt_bench").needs_baseline


def test_categories_skip_question_lines_that_are_not_objects(tmp_path):
    # the question reader rejects these lines with their reasons; reading the categories of
    # the same file must not crash on them (it did on invalid UTF-8 and on a bare number)
    from moaa_cluster.pipeline.eval_protocols import _categories

    f = tmp_path / "question.jsonl"
    f.write_bytes(
        b'\xef\xbb\xbf{"question_id": 1, "category": "math"}\n'  # byte-order mark
        + b"\xff\xfe not UTF-8\n"
        + b"7\n"
        + b'"question_id"\n'
        + b"[1, 2]\n"
        + b'{"question_id": 2, "category": "writing"}\r\n'
        + b'{"question_id": 3, "category": 5}\n'
        + b"{broken\n"
    )
    got = _categories([Source("q", path=str(f))])
    assert got == {("q", "1"): "math", ("q", "2"): "writing"}
