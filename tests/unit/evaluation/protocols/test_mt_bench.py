"""MT-Bench's single-answer grading: the prompts byte for byte, which prompt, the rating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocols.mt_bench import (
    JUDGE_PROMPTS,
    JUDGE_SETTINGS,
    NEED_REF_CATS,
    SINGLE_MATH_V1,
    SINGLE_MATH_V1_MULTI_TURN,
    SINGLE_V1,
    SINGLE_V1_MULTI_TURN,
    MTBenchQuestion,
    judge_messages,
    judge_prompt_for,
    load_questions,
    load_reference_answers,
    needs_reference,
    parse_rating,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols"
SINGLE_NAMES = ["single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]
CATEGORIES = [
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
]


def _records() -> dict[str, dict]:
    lines = (FIXTURES / "mt_bench_judge_prompts.jsonl").read_bytes().decode("utf-8").splitlines()
    return {r["name"]: r for r in map(json.loads, lines)}


# --- the prompts, byte for byte -------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_NAMES)
def test_prompt_is_fastchats_byte_for_byte(name):
    record, prompt = _records()[name], JUDGE_PROMPTS[name]
    assert prompt.name == name
    assert prompt.system_prompt.encode("utf-8") == record["system_prompt"].encode("utf-8")
    assert prompt.prompt_template.encode("utf-8") == record["prompt_template"].encode("utf-8")
    assert (record["type"], record["output_format"]) == ("single", "[[rating]]")
    assert prompt.reference_guided == ("{ref_answer_1}" in record["prompt_template"])
    assert prompt.multi_turn == ("{question_2}" in record["prompt_template"])


def test_only_the_single_answer_prompts_are_here():
    assert sorted(JUDGE_PROMPTS) == sorted(SINGLE_NAMES)
    assert sorted(n for n, r in _records().items() if r["type"] == "single") == sorted(SINGLE_NAMES)


def _marker_question(category: str) -> MTBenchQuestion:
    return MTBenchQuestion(1, category, ("{question_1}", "{question_2}"))


@pytest.mark.parametrize("category", ["writing", "math"])
def test_messages_built_with_marker_placeholders_reproduce_the_templates(category):
    records = _records()
    ref = needs_reference(category)
    q1 = MTBenchQuestion(1, category, ("{question}", "unused"))
    msgs = judge_messages(q1, ["{answer}", "unused"], 1, ["{ref_answer_1}", "unused"])
    turn1 = records["single-math-v1" if ref else "single-v1"]
    assert msgs == [
        {"role": "system", "content": turn1["system_prompt"]},
        {"role": "user", "content": turn1["prompt_template"]},
    ]
    q2 = _marker_question(category)
    msgs = judge_messages(q2, ["{answer_1}", "{answer_2}"], 2, ["{ref_answer_1}", "{ref_answer_2}"])
    turn2 = records["single-math-v1-multi-turn" if ref else "single-v1-multi-turn"]
    assert msgs == [
        {"role": "system", "content": turn2["system_prompt"]},
        {"role": "user", "content": turn2["prompt_template"]},
    ]


def test_settings():
    assert dict(JUDGE_SETTINGS) == {"temperature": 0.0, "max_tokens": 2048}


# --- which prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_reference_guided_categories(category):
    guided = category in ("math", "reasoning", "coding")
    assert needs_reference(category) is guided
    assert judge_prompt_for(category, 1) is (SINGLE_MATH_V1 if guided else SINGLE_V1)
    expected = SINGLE_MATH_V1_MULTI_TURN if guided else SINGLE_V1_MULTI_TURN
    assert judge_prompt_for(category, 2) is expected


def test_need_ref_cats_is_fastchats():
    assert NEED_REF_CATS == ("math", "reasoning", "coding")


@pytest.mark.parametrize("turn", [0, 3, "1"])
def test_only_turns_1_and_2(turn):
    with pytest.raises(ValueError, match="turn"):
        judge_prompt_for("writing", turn)


def test_turn_2_shows_the_whole_conversation_and_the_references_two_turns():
    q = MTBenchQuestion(7, "math", ("Q-one", "Q-two"))
    user = judge_messages(q, ["A-one", "A-two"], 2, ["R-one", "R-two"])[1]["content"]
    order = ["Q-one", "R-one", "Q-two", "R-two", "Q-one", "A-one", "Q-two", "A-two"]
    at = 0
    for text in order:
        at = user.index(text, at) + len(text)
    turn1 = judge_messages(q, ["A-one", "A-two"], 1, ["R-one", "R-two"])[1]["content"]
    assert "R-one" in turn1 and "R-two" not in turn1 and "Q-two" not in turn1


def test_a_reference_is_needed_only_where_guided():
    with pytest.raises(ValueError, match="reference"):
        judge_messages(MTBenchQuestion(1, "coding", ("q", "q2")), ["a"], 1)
    with pytest.raises(ValueError, match="reference"):
        judge_messages(MTBenchQuestion(1, "reasoning", ("q", "q2")), ["a", "b"], 2, ["r"])
    # FastChat uses references only for NEED_REF_CATS; one given for another is ignored
    q = MTBenchQuestion(1, "writing", ("q", "q2"))
    assert judge_messages(q, ["a"], 1, ["REF"]) == judge_messages(q, ["a"], 1)


def test_turns_must_be_there():
    with pytest.raises(ValueError, match="answer"):
        judge_messages(MTBenchQuestion(1, "writing", ("q", "q2")), ["a"], 2)
    with pytest.raises(ValueError, match="two-turn"):
        judge_messages(MTBenchQuestion(1, "writing", ("q",)), ["a", "b"], 2)
    with pytest.raises(ValueError, match="answer"):
        judge_messages(MTBenchQuestion(1, "writing", ("q",)), [], 1)


def test_inserted_texts_are_not_scanned_again():
    q = MTBenchQuestion(1, "coding", ("def f(): return {'a': 1}", "{answer_2} {0}"))
    user = judge_messages(q, ["x = {}", "{question_1}"], 2, ["{ref_answer_2}", "}{"])[1]["content"]
    for text in ("def f(): return {'a': 1}", "{answer_2} {0}", "x = {}", "{question_1}", "}{"):
        assert f"\n{text}\n" in user


# --- the rating -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is correct and clear. Rating: [[9]]", 9.0),
        ("Rating: [[5]]", 5.0),
        ("[[8.5]]", 8.5),
        ("[[10]]", 10.0),
        ("[[1]]", 1.0),
        ("[[8.]]", 8.0),
        ("Rating: [7]", 7.0),  # the backup pattern
        # the first match decides (re.search), double brackets before single ones
        ("Rating: [[3]]. Had it explained more it would be [[9]].", 3.0),
        ("Step [2] is wrong, so the rating is [[4]]", 4.0),
        ("Step [2] is wrong, rating [6]", 2.0),
        # out of the 1-10 scale: no rating, and no fall-back to a later match
        ("[[0]]", None),
        ("[[11]]", None),
        ("[[100]]", None),
        ("[[0]] I mean [[7]]", None),
        ("[[10.5]]", None),
        # unreadable
        ("", None),
        ("Rating: 7/10", None),
        ("Rating: [[ 8 ]]", None),
        ("Rating: [[-3]]", None),
        ("Rating: [[rating]]", None),
    ],
)
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


# --- loaders --------------------------------------------------------------------------------


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_questions(tmp_path):
    path = _write(
        tmp_path / "question.jsonl",
        [
            {"question_id": 81, "category": "writing", "turns": ["t1", "t2"]},
            {"question_id": 95, "category": "math", "turns": ["m1", "m2"], "reference": ["r"]},
        ],
    )
    assert load_questions(path) == [
        MTBenchQuestion(81, "writing", ("t1", "t2")),
        MTBenchQuestion(95, "math", ("m1", "m2")),
    ]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"question_id": 1, "category": "math", "turns": ["a"]}] * 2, "occurs twice"),
        ([{"question_id": "1", "category": "math", "turns": ["a"]}], "question_id"),
        ([{"question_id": True, "category": "math", "turns": ["a"]}], "question_id"),
        ([{"question_id": 1, "turns": ["a"]}], "'category'"),
        ([{"question_id": 1, "category": "math", "turns": []}], "turns"),
        ([{"question_id": 1, "category": "math", "turns": "a"}], "turns"),
        ([{"question_id": 1, "category": "math", "turns": ["a", 2]}], "turns"),
    ],
)
def test_load_questions_refuses_a_bad_file(tmp_path, records, message):
    with pytest.raises(ConfigError, match=message):
        load_questions(_write(tmp_path / "question.jsonl", records))


def _ref(qid: int, turns: object) -> dict:
    return {"question_id": qid, "answer_id": "x", "model_id": "gpt-4", "choices": [turns]}


def test_load_reference_answers(tmp_path):
    path = _write(
        tmp_path / "gpt-4.jsonl",
        [_ref(101, {"index": 0, "turns": ["r1", "r2"]}), _ref(102, {"turns": ["s1", "s2"]})],
    )
    assert load_reference_answers(path) == {101: ("r1", "r2"), 102: ("s1", "s2")}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([_ref(1, {"turns": ["a"]}), _ref(1, {"turns": ["b"]})], "occurs twice"),
        ([{"question_id": 1, "choices": []}], "choices"),
        ([{"question_id": 1}], "choices"),
        ([_ref(1, "text")], "choices"),
        ([_ref(1, {"turns": None})], "turns"),
    ],
)
def test_load_reference_answers_refuses_a_bad_file(tmp_path, records, message):
    with pytest.raises(ConfigError, match=message):
        load_reference_answers(_write(tmp_path / "gpt-4.jsonl", records))
