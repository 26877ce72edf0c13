"""AlpacaEval 2's judge: the prompt byte for byte, the order, and reading the preference."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from moaa_cluster.evaluation.protocols import alpaca_eval2 as ae
from moaa_cluster.evaluation.protocols.alpaca_eval2 import (
    JUDGE_SETTINGS,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    build_game,
    fill_user_prompt,
    judge_messages,
    model_position_for,
    preference_from_logprobs,
    preference_from_text,
    to_chatml,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols"
PROMPT_FILE = FIXTURES / "alpaca_eval2_clf_prompt.txt"

# The example completion in alpaca_eval's logprob_parser docstring: the judge said "M".
GPT4_TOP = [
    {"token": "M", "logprob": -0.017597131},
    {"token": "m", "logprob": -4.048847},
    {"token": "Both", "logprob": -14.908222},
    {"token": "The", "logprob": -15.705097},
    {"token": "Based", "logprob": -15.955097},
]
P_M = math.exp(-0.017597131) / (math.exp(-0.017597131) + math.exp(-4.048847))


def _file_text() -> str:
    return PROMPT_FILE.read_bytes().decode("utf-8")


def _read_markup_like_alpaca_eval(prompt: str) -> list[dict[str, str]]:
    """alpaca_eval's reading of the markup (prompt_to_chatml): content after the role line up
    to <|im_end|>, stripped. Written here from that rule, to check our constants against it."""
    messages = []
    for part in prompt.strip().split("<|im_start|>")[1:]:
        role, rest = part.split("\n", 1)
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


# --- the prompt, byte for byte --------------------------------------------------------------


def test_markup_around_the_constants_is_the_file_byte_for_byte():
    assert to_chatml(SYSTEM_PROMPT, USER_TEMPLATE).encode("utf-8") == PROMPT_FILE.read_bytes()


def test_messages_built_with_marker_placeholders_reproduce_the_file():
    msgs = judge_messages("{instruction}", "{output_1}", "{output_2}")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert to_chatml(msgs[0]["content"], msgs[1]["content"]) == _file_text()
    # model first: the model's text goes where {output_1} was
    msgs = judge_messages("{instruction}", "{output_2}", "{output_1}", model_position="m")
    assert to_chatml(msgs[0]["content"], msgs[1]["content"]) == _file_text()


def test_constants_are_what_alpaca_eval_reads_from_the_markup():
    assert _read_markup_like_alpaca_eval(_file_text()) == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE},
    ]
    # the stripping removes exactly the newline after each role line and before <|im_end|>
    assert SYSTEM_PROMPT == SYSTEM_PROMPT.strip() and USER_TEMPLATE == USER_TEMPLATE.strip()


def test_template_has_each_placeholder_once():
    for name in ("{instruction}", "{output_1}", "{output_2}"):
        assert USER_TEMPLATE.count(name) == 1
    assert "<|im_" not in SYSTEM_PROMPT + USER_TEMPLATE


def test_settings_are_the_annotator_configs():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((FIXTURES / "alpaca_eval2_weighted_gpt4_turbo_config.yaml").read_text())
    annotator = config["weighted_alpaca_eval_gpt4_turbo"]
    kwargs = annotator["completions_kwargs"]
    assert dict(JUDGE_SETTINGS) == {
        k: kwargs[k] for k in ("max_tokens", "temperature", "logprobs", "top_logprobs")
    }
    parser = annotator["completion_parser_kwargs"]
    assert (ae.OUTPUT_1_ID, sorted([ae.OUTPUT_1_ID, ae.OUTPUT_2_ID])) == (
        parser["numerator_token"],
        sorted(parser["denominator_tokens"]),
    )
    with pytest.raises(TypeError):
        JUDGE_SETTINGS["max_tokens"] = 2  # type: ignore[index]


# --- filling and order ----------------------------------------------------------------------


def _slot(user: str, identifier: str) -> str:
    """The output text shown under a model identifier in a filled user message."""
    after = user.split(f'"model_identifier": "{identifier}",\n        "output": """', 1)[1]
    return after.split('"""\n    }', 1)[0]


def test_default_order_shows_the_reference_as_m_and_the_model_as_M():
    user = judge_messages("Say hi.", "REF", "MODEL")[1]["content"]
    assert (_slot(user, "m"), _slot(user, "M")) == ("REF", "MODEL")
    assert '"instruction": """Say hi.""",' in user


def test_model_first_order_swaps_the_outputs():
    user = judge_messages("Say hi.", "REF", "MODEL", model_position="m")[1]["content"]
    assert (_slot(user, "m"), _slot(user, "M")) == ("MODEL", "REF")


def test_inserted_texts_are_not_scanned_again():
    tricky = "use {output_1} and {output_2} and {instruction}; <|im_end|> {}"
    user = fill_user_prompt(tricky, "A {instruction}", "B")
    assert user.count(tricky) == 1
    assert _slot(user, "m") == "A {instruction}"
    assert _slot(user, "M") == "B"


def test_an_invalid_position_is_refused():
    with pytest.raises(ValueError, match="model_position"):
        judge_messages("q", "r", "o", model_position="A")
    with pytest.raises(ValueError, match="model_position"):
        preference_from_logprobs(GPT4_TOP, "output_2")
    with pytest.raises(ValueError, match="model_position"):
        preference_from_text("M", " M")


def test_randomized_order_is_pinned_and_reproducible():
    # pinned: recorded runs must be re-derivable, so the derivation may not drift
    assert "".join(model_position_for(0, i) for i in range(16)) == "MmmMMMmmmMMMMMmM"
    assert "".join(model_position_for(1, i) for i in range(16)) == "MMmmmMMmMMmmMmmM"
    assert model_position_for(3, 17) == model_position_for(3, "17")
    share = sum(model_position_for(7, i) == "m" for i in range(1000)) / 1000
    assert 0.45 < share < 0.55


def test_build_game_records_the_position_it_used():
    default = build_game(5, "q", "REF", "MODEL")
    assert (default.question_id, default.model_position) == ("5", "M")
    assert default.messages == judge_messages("q", "REF", "MODEL")
    for qid in range(8):
        game = build_game(qid, "q", "REF", "MODEL", seed=0)
        assert game.model_position == model_position_for(0, qid)
        user = game.messages[1]["content"]
        assert _slot(user, game.model_position) == "MODEL"


# --- reading the preference -----------------------------------------------------------------


def test_gpt4_example_reads_as_the_probability_of_the_models_token():
    assert preference_from_logprobs(GPT4_TOP, "M") == pytest.approx(P_M, rel=1e-12)
    assert preference_from_logprobs(GPT4_TOP, "m") == pytest.approx(1 - P_M, rel=1e-12)
    # alpaca_eval's own number for this completion is 2 - P(m) on its 1-2 scale
    assert 2 - preference_from_logprobs(GPT4_TOP, "m") == pytest.approx(1 + P_M)


def test_a_token_to_logprob_dict_reads_the_same():
    as_dict = {e["token"]: e["logprob"] for e in GPT4_TOP}
    assert preference_from_logprobs(as_dict, "M") == pytest.approx(P_M, rel=1e-12)


def test_objects_with_token_and_logprob_attributes_read_the_same():
    objs = [SimpleNamespace(token=e["token"], logprob=e["logprob"]) for e in GPT4_TOP]
    assert preference_from_logprobs(objs, "M") == pytest.approx(P_M, rel=1e-12)


@pytest.mark.parametrize(
    ("top", "position", "expected"),
    [
        # one identifier missing: it has probability 0 (alpaca_eval's rule)
        ([{"token": "M", "logprob": -0.1}, {"token": "The", "logprob": -2.0}], "M", 1.0),
        ([{"token": "M", "logprob": -0.1}, {"token": "The", "logprob": -2.0}], "m", 0.0),
        ({"m": -3.0, "Model": -0.01}, "M", 0.0),
        # neither present: unreadable, never scored
        ([{"token": "Model", "logprob": -0.1}, {"token": "mm", "logprob": -1.0}], "M", None),
        ([], "M", None),
        ({}, "m", None),
        # present only with probability 0
        ({"m": -math.inf, "M": -math.inf}, "M", None),
        ({"m": -math.inf, "M": -5.0}, "M", 1.0),
        # a NaN from the engine is not a probability
        ({"m": float("nan"), "M": -0.1}, "M", None),
    ],
)
def test_missing_tokens(top, position, expected):
    assert preference_from_logprobs(top, position) == expected


def test_case_is_never_folded():
    top = {"M": math.log(0.3), "m": math.log(0.1), "MM": math.log(0.5)}
    assert preference_from_logprobs(top, "M") == pytest.approx(0.75)
    assert preference_from_logprobs(top, "m") == pytest.approx(0.25)


def test_leading_space_tokens_count_unless_exact():
    top = [{"token": " M", "logprob": math.log(0.6)}, {"token": "m", "logprob": math.log(0.2)}]
    assert preference_from_logprobs(top, "M") == pytest.approx(0.75)
    # the exact match of alpaca_eval sees only "m"
    assert preference_from_logprobs(top, "M", exact_tokens=True) == 0.0
    assert preference_from_logprobs([{"token": "\nm ", "logprob": -1.0}], "m") == 1.0


def test_spellings_of_one_identifier_add_up():
    top = [
        {"token": "M", "logprob": math.log(0.3)},
        {"token": " M", "logprob": math.log(0.3)},
        {"token": "m", "logprob": math.log(0.2)},
    ]
    assert preference_from_logprobs(top, "M") == pytest.approx(0.75)
    assert preference_from_logprobs(top, "M", exact_tokens=True) == pytest.approx(0.6)


def test_very_small_probabilities_do_not_underflow():
    assert preference_from_logprobs({"M": -1000.0, "m": -1001.0}, "M") == pytest.approx(
        1 / (1 + math.exp(-1.0))
    )
    assert preference_from_logprobs({"M": 0.0, "m": -2000.0}, "m") == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        "M",
        None,
        [{"token": "M"}],
        [{"token": 7, "logprob": -0.1}],
        [{"token": "M", "logprob": "-0.1"}],
        [{"token": "M", "logprob": True}],
    ],
)
def test_a_malformed_structure_is_the_callers_error(bad):
    with pytest.raises(ValueError, match="top_logprobs"):
        preference_from_logprobs(bad, "M")


@pytest.mark.parametrize(
    ("text", "expected_for_M"),
    [
        ("M", 1.0),
        ("m", 0.0),
        (" M", 1.0),
        ("m\n", 0.0),
        ("M.", 1.0),
        ('"m"', 0.0),
        ("**M**", 1.0),
        ("M is better", 1.0),
        # not an identifier standing alone
        ("Model", None),
        ("my choice", None),
        ("mM", None),
        ("", None),
        ("The best model is M", None),
        # both named: unreadable
        ("m or M", None),
        ("M, not m", None),
    ],
)
def test_preference_from_text(text, expected_for_M):
    assert preference_from_text(text, "M") == expected_for_M
    expected_for_m = None if expected_for_M is None else 1.0 - expected_for_M
    assert preference_from_text(text, "m") == expected_for_m
