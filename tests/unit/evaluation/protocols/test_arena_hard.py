"""Arena-Hard-Auto v0.1's judge: the prompts byte for byte, the two games, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocols.arena_hard import (
    JUDGE_SETTINGS,
    OUTCOMES,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    VERDICT_PATTERNS,
    VERDICTS,
    build_games,
    judge_messages,
    load_answers,
    load_questions,
    model_outcome,
    parse_verdict,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols"


def _config() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((FIXTURES / "arena_hard_v0.1_config.yaml").read_text(encoding="utf-8"))


# --- the prompts, byte for byte -------------------------------------------------------------


def test_system_prompt_is_the_benchmarks():
    data = json.loads((FIXTURES / "arena_hard_v0.1_judge_prompt.json").read_bytes())
    assert SYSTEM_PROMPT.encode("utf-8") == data["system_prompt_v0.1"].encode("utf-8")


def test_user_template_is_the_configs():
    template = _config()["prompt_template"]
    assert USER_TEMPLATE.encode("utf-8") == template.encode("utf-8")
    # and the config's text in the file is that string, written as one double-quoted line
    raw = (FIXTURES / "arena_hard_v0.1_config.yaml").read_text(encoding="utf-8")
    assert f"prompt_template: {json.dumps(USER_TEMPLATE)}\n" in raw


def test_messages_built_with_marker_placeholders_reproduce_the_files():
    data = json.loads((FIXTURES / "arena_hard_v0.1_judge_prompt.json").read_bytes())
    msgs = judge_messages("{QUESTION}", "{ANSWER_A}", "{ANSWER_B}")
    assert msgs == [
        {"role": "system", "content": data["system_prompt_v0.1"]},
        {"role": "user", "content": _config()["prompt_template"]},
    ]


def test_settings_are_the_configs():
    config = _config()
    assert dict(JUDGE_SETTINGS) == {
        "temperature": config["temperature"],
        "max_tokens": config["max_tokens"],
    }


def test_verdict_patterns_are_the_recorded_ones_in_order():
    # the fixture config's regex_patterns list is empty (see fixtures/protocols/README.md);
    # the project's notes record the two patterns and their order
    notes = (FIXTURES / "SOURCE.protocols.md").read_text(encoding="utf-8")
    recorded = f"verdict regexes {VERDICT_PATTERNS[0].pattern} then {VERDICT_PATTERNS[1].pattern}"
    assert recorded in " ".join(notes.split())


def test_inserted_texts_are_not_scanned_again():
    user = judge_messages("{ANSWER_B} {0} {}", "a {QUESTION}", "b }{")[1]["content"]
    assert user.startswith("<|User Prompt|>\n{ANSWER_B} {0} {}\n\n")
    assert "\na {QUESTION}\n<|The End of Assistant A's Answer|>" in user
    assert "\nb }{\n<|The End of Assistant B's Answer|>" in user


# --- games ----------------------------------------------------------------------------------


def _shown(user: str, side: str) -> str:
    start = f"<|The Start of Assistant {side}'s Answer|>\n"
    return user.split(start, 1)[1].split(f"\n<|The End of Assistant {side}'s Answer|>", 1)[0]


def test_two_games_in_arena_hard_autos_order():
    g1, g2 = build_games("u1", "Q?", "MODEL", "BASE")
    assert (g1.uid, g1.game, g1.model_side) == ("u1", 1, "B")
    assert (g2.uid, g2.game, g2.model_side) == ("u1", 2, "A")
    u1, u2 = g1.messages[1]["content"], g2.messages[1]["content"]
    assert (_shown(u1, "A"), _shown(u1, "B")) == ("BASE", "MODEL")
    assert (_shown(u2, "A"), _shown(u2, "B")) == ("MODEL", "BASE")
    for game in (g1, g2):
        assert _shown(game.messages[1]["content"], game.model_side) == "MODEL"
        assert game.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}


# --- the verdict ----------------------------------------------------------------------------

VERDICT_CASES = [
    ('My final verdict is tie: [[A=B]]"', "A=B"),
    ("My final verdict is: Assistant A is significantly better: [[A>>B]]", "A>>B"),
    ("[[A>B]]", "A>B"),
    ("Assistant B is slightly better: [[B>A]].", "B>A"),
    ("My final verdict is Assistant B is significantly better: [[B>>A]]", "B>>A"),
    # several verdicts: the last one of the first pattern that matches
    ("At first I thought [[A>B]], but after checking the code, [[B>A]].", "B>A"),
    ('Example output: "My final verdict is tie: [[A=B]]".\n\nMy final verdict: [[B>>A]]', "B>>A"),
    ("[[A>>B]] ... [[A>>B]]", "A>>B"),
    # double brackets win over single ones, wherever they are
    ("Verdict [[A>B]] ... though one might say [B>A]", "A>B"),
    ("My verdict [B>A]. Final: [[A=B]]", "A=B"),
    # single brackets only when there are no double ones
    ("My final verdict is [A>B].", "A>B"),
    ("[A=B] then [B>>A]", "B>>A"),
    ("My final verdict is [[A>B]", "A>B"),  # unbalanced: the single pattern finds [A>B]
    # the text is upper-cased first, as arena-hard-auto does
    ("final verdict: [[a>b]]", "A>B"),
    ("[[b>>a]]", "B>>A"),
    # mirror spellings show_result.py scores, in canonical form
    ("[[B=A]]", "A=B"),
    ("[[A<B]]", "B>A"),
    ("[[A<<B]]", "B>>A"),
    ("[[B<A]]", "A>B"),
    ("[[B<<A]]", "A>>B"),
    # unreadable
    ("", None),
    ("Assistant A is better.", None),
    ("My final verdict is A>B", None),
    ("[[C]]", None),
    ("[[ A>B ]]", None),
    # the deciding match is not a label: no verdict, no fall-back to an earlier one
    ("[[A>B]] ... so the answer is [[A]]", None),
    ("As noted in [A], the first answer is better.", None),
    ("[[A>B>A]]", None),
    ("[[AB]]", None),
]


@pytest.mark.parametrize(("text", "expected"), VERDICT_CASES)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_a_real_looking_judgment():
    text = (
        "My own answer to the prompt:\n\n```python\ndef f(xs):\n    return xs[::-1]\n```\n\n"
        "Assistant A's answer is correct but verbose; it uses xs[0] in a loop.\n"
        "Assistant B's answer matches mine and is concise.\n\n"
        "My final verdict is: Assistant B is slightly better: [[B>A]]"
    )
    assert parse_verdict(text) == "B>A"


# --- the model's view -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "as_a", "as_b"),
    [
        ("A>>B", "strong_win", "strong_loss"),
        ("A>B", "win", "loss"),
        ("A=B", "tie", "tie"),
        ("B>A", "loss", "win"),
        ("B>>A", "strong_loss", "strong_win"),
        ("B=A", "tie", "tie"),
        ("A<B", "loss", "win"),
        ("B<<A", "strong_win", "strong_loss"),
    ],
)
def test_model_outcome_both_sides(verdict, as_a, as_b):
    assert model_outcome(verdict, "A") == as_a
    assert model_outcome(verdict, "B") == as_b


def test_every_verdict_has_an_outcome_and_the_sides_mirror():
    assert [model_outcome(v, "A") for v in VERDICTS] == list(OUTCOMES)
    assert [model_outcome(v, "B") for v in VERDICTS] == list(reversed(OUTCOMES))


@pytest.mark.parametrize(("verdict", "side"), [("A", "A"), ("", "B"), ("A>B", "C"), ("A>B", "a")])
def test_model_outcome_refuses_unknown_input(verdict, side):
    with pytest.raises(ValueError):
        model_outcome(verdict, side)


def test_a_question_read_end_to_end():
    g1, g2 = build_games("u", "Q", "MODEL", "BASE")
    # the judge prefers the model in both orders: B in game 1, A in game 2
    assert model_outcome(parse_verdict("[[B>>A]]"), g1.model_side) == "strong_win"
    assert model_outcome(parse_verdict("[[A>B]]"), g2.model_side) == "win"


# --- loaders --------------------------------------------------------------------------------


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_questions(tmp_path):
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"uid": "a1", "category": "arena-hard-v0.1", "cluster": "C", "prompt": "P1"},
            {"uid": "b2", "category": "arena-hard-v0.1", "cluster": "C", "prompt": "P2"},
        ],
    )
    questions = load_questions(path)
    assert [(q.uid, q.category, q.prompt) for q in questions] == [
        ("a1", "arena-hard-v0.1", "P1"),
        ("b2", "arena-hard-v0.1", "P2"),
    ]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"uid": "a", "category": "c", "prompt": "p"}] * 2, "occurs twice"),
        ([{"uid": "a", "category": "c"}], "'prompt'"),
        ([{"uid": 1, "category": "c", "prompt": "p"}], "'uid'"),
        ([["not", "an", "object"]], "JSON object"),
        ([], "no records"),
    ],
)
def test_load_questions_refuses_a_bad_file(tmp_path, records, message):
    with pytest.raises(ConfigError, match=message):
        load_questions(_write(tmp_path / "q.jsonl", records))


def test_load_questions_refuses_a_broken_line_and_a_missing_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"uid": "a", "category": "c", "prompt": "p"}\n{"uid": \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"q\.jsonl:2"):
        load_questions(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_questions(tmp_path / "absent.jsonl")


def _answer(uid: str, content: object) -> dict:
    return {
        "uid": uid,
        "model": "gpt-4-0314",
        "messages": [
            {"role": "user", "content": "the prompt"},
            {"role": "assistant", "content": content},
        ],
    }


def test_load_answers(tmp_path):
    path = _write(tmp_path / "a.jsonl", [_answer("u1", {"answer": "A1"}), _answer("u2", "A2")])
    assert load_answers(path) == {"u1": "A1", "u2": "A2"}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([_answer("u", {"answer": "x"}), _answer("u", {"answer": "y"})], "occurs twice"),
        ([_answer("u", {"text": "x"})], "answer must be"),
        ([{"uid": "u", "messages": [{"role": "user", "content": "q"}]}], "assistant"),
        ([{"uid": "u", "messages": []}], "messages"),
    ],
)
def test_load_answers_refuses_a_bad_file(tmp_path, records, message):
    with pytest.raises(ConfigError, match=message):
        load_answers(_write(tmp_path / "a.jsonl", records))
