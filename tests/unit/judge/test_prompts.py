"""The judge's K.2-K.4 prompts: verbatim against the paper, and how they are filled."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from moaa_cluster.judge.prompts import (
    CRITERIA,
    CRITERIA_FILTER,
    DEFAULT_CRITERIA,
    JUDGE_AGGREGATOR,
    JUDGE_PROPOSER,
    VERDICT_FOLLOWUP,
    aggregator_prompt,
    criteria_filter_prompt,
    format_evaluations,
    proposer_prompt,
    render_criteria,
    render_question,
)

PAPER = Path(__file__).resolve().parents[3].parent / "shared" / "PAPER.md"
# reference copies kept with the tests, so the byte checks run on every clone
REFERENCES = Path(__file__).resolve().parents[1] / "fixtures" / "paper_prompts"
HEADINGS = {
    "K.2": "## K.2 Criteria filtering prompt",
    "K.3": "## K.3 Judge proposer prompt",
    "K.4": "## K.4 Judge aggregator prompt",
}


def _block(key: str) -> str:
    return (REFERENCES / f"{key.replace('.', '')}.txt").read_bytes().decode("utf-8")


@pytest.mark.parametrize("key", sorted(HEADINGS))
def test_reference_copy_is_the_papers_text(key):
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} not present: the reference copy stands for it")
    text = PAPER.read_text(encoding="utf-8")
    heading = HEADINGS[key]
    start = text.find(heading)
    assert start >= 0, f"heading {heading!r} not found in {PAPER}"
    match = re.compile(r"```[^\n]*\n(.*?)\n```", re.S).search(text, start + len(heading))
    assert match, f"no fenced code block after the {key} heading"
    assert match.group(1) == _block(key)


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize(
    ("key", "template"),
    [("K.2", CRITERIA_FILTER), ("K.3", JUDGE_PROPOSER), ("K.4", JUDGE_AGGREGATOR)],
)
def test_template_matches_paper_byte_for_byte(key, template):
    assert template.encode("utf-8") == _block(key).encode("utf-8")


def test_template_placeholders():
    assert _fields(CRITERIA_FILTER) == {"question", "answer_a", "answer_b"}
    assert _fields(JUDGE_PROPOSER) == {"criteria"}
    assert _fields(JUDGE_AGGREGATOR) == {
        "criteria",
        "question",
        "answer_a",
        "answer_b",
        "proposer_evaluations",
    }


def test_criteria_are_k2_list_in_order():
    block = _block("K.2")
    listed = re.findall(r"^(\d)\. ([^:\n]+): (.+)$", block, re.M)
    assert [(int(k), name, text) for k, name, text in listed] == [
        (k, name, text) for k, (name, text) in enumerate(CRITERIA.items(), start=1)
    ]
    assert CRITERIA["Instruction adherence"] == (
        "How well the response follows the user's instructions."
    )


def test_k2_list_renders_like_render_criteria():
    assert render_criteria(list(CRITERIA)) in CRITERIA_FILTER


def test_default_criteria_are_known():
    assert len(DEFAULT_CRITERIA) == 3
    assert set(DEFAULT_CRITERIA) <= set(CRITERIA)
    render_criteria(DEFAULT_CRITERIA)


def test_render_criteria():
    assert render_criteria(["Accuracy", "Depth"]) == (
        "1. Accuracy: The correctness and up-to-date nature of the information provided.\n"
        "2. Depth: The comprehensiveness and level of detail in the answer."
    )


@pytest.mark.parametrize(
    "names", [[], ["Accuracy", "Creativity"], ["accuracy"], ["Accuracy", "Accuracy"]]
)
def test_render_criteria_rejects(names):
    with pytest.raises(ValueError):
        render_criteria(names)


def test_criteria_filter_prompt():
    out = criteria_filter_prompt("Q?", "ans a", "ans b")
    assert out.startswith("Analyze the following user query")
    assert "User query: Q?\n\nAssistant A response: ans a\n\nAssistant B response: ans b\n\n" in out
    assert out.endswith("Explanation: [Briefly explain why you chose these three criteria]")
    assert "{" not in out


def test_braces_in_inputs_survive():
    q, a, b = "Format {x} as {}", "use {0}", "use {name!r}"
    assert f"User query: {q}\n\nAssistant A response: {a}" in criteria_filter_prompt(q, a, b)
    assert proposer_prompt(DEFAULT_CRITERIA, q, a, b).endswith(f"Assistant B response: {b}")
    assert "Evaluation 1:\n{oops}" in aggregator_prompt(DEFAULT_CRITERIA, q, a, b, ["{oops}"])


def test_proposer_prompt_layout():
    crit = ("Accuracy", "Depth", "Clarity")
    out = proposer_prompt(crit, "Why?", "Because.", "No idea.")
    expected = (
        JUDGE_PROPOSER.replace("{criteria}", render_criteria(crit))
        + "\n\nUser query: Why?\n\nAssistant A response: Because.\n\nAssistant B response: No idea."
    )
    assert out == expected
    assert "compare them directly.\n\n1. Accuracy: The correctness" in out
    assert (
        "3. Clarity: How well-structured and easy to understand the response is.\n\n3. Eval" in out
    )


def test_proposer_prompt_bad_criteria():
    with pytest.raises(ValueError):
        proposer_prompt(("Accuracy", "Vibes", "Depth"), "q", "a", "b")


def test_format_evaluations():
    assert format_evaluations(["x"]) == "Evaluation 1:\nx"
    assert format_evaluations(("first", "second\nline")) == (
        "Evaluation 1:\nfirst\n\nEvaluation 2:\nsecond\nline"
    )
    with pytest.raises(ValueError):
        format_evaluations([])


def test_aggregator_prompt_layout():
    crit = ("Safety", "Relevance", "Robustness")
    out = aggregator_prompt(crit, "q", "a", "b", ["e1", "e2", "e3"])
    expected = (
        JUDGE_AGGREGATOR.replace("{criteria}", render_criteria(crit))
        .replace("{question}", "q")
        .replace("{answer_a}", "a")
        .replace("{answer_b}", "b")
        .replace(
            "{proposer_evaluations}", "Evaluation 1:\ne1\n\nEvaluation 2:\ne2\n\nEvaluation 3:\ne3"
        )
    )
    assert out == expected
    assert out.endswith("Evaluation 3:\ne3\n\nFinal Meta-Evaluation:")
    with pytest.raises(ValueError):
        aggregator_prompt(crit, "q", "a", "b", [])


def test_verdict_followup():
    assert '"[[A]]"' in VERDICT_FOLLOWUP and '"[[B]]"' in VERDICT_FOLLOWUP
    assert "{" not in VERDICT_FOLLOWUP.replace("[[", "")


def test_render_question_single_user_message_verbatim():
    text = "  What is 2+2?\n"
    assert render_question([{"role": "user", "content": text}]) == text


def test_render_question_transcript():
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a prime."},
    ]
    assert render_question(messages) == (
        "System: Be terse.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Name a prime."
    )


def test_render_question_system_and_user():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_question(messages) == "System: S\n\nUser: U"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "S"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ],
)
def test_render_question_rejects(messages):
    with pytest.raises(ValueError):
        render_question(messages)
