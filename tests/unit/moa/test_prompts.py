"""The K.1 Aggregate-and-Synthesize prompt and how it is put into the messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from moaa_cluster.moa.prompts import (
    AGGREGATE_AND_SYNTHESIZE,
    aggregate_system_prompt,
    inject_responses,
)

PAPER = Path(__file__).resolve().parents[3].parent / "shared" / "PAPER.md"
# the reference copy kept with the tests, so the byte check runs on every clone
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "paper_prompts" / "K1.txt"
HEADING = "## K.1 Aggregate-and-Synthesize prompt"
HEADER_END = "Responses from models:"


def _k1_block() -> str:
    return REFERENCE.read_bytes().decode("utf-8")


def test_reference_copy_is_the_papers_text():
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} not present: the reference copy stands for it")
    text = PAPER.read_text(encoding="utf-8")
    start = text.find(HEADING)
    assert start >= 0, f"heading {HEADING!r} not found in {PAPER}"
    match = re.compile(r"```[^\n]*\n(.*?)\n```", re.S).search(text, start + len(HEADING))
    assert match, "no fenced code block after the K.1 heading"
    assert match.group(1) == _k1_block()


def test_template_matches_paper_byte_for_byte():
    block = _k1_block()
    assert block.rstrip().endswith("1. {response 1}\n2. {response 2}\n...\nn. {response n}")
    end = block.index(HEADER_END) + len(HEADER_END)
    expected = block[:end]
    assert AGGREGATE_AND_SYNTHESIZE.encode("utf-8") == expected.encode("utf-8")


def test_paper_numbering_matches_rendering():
    block = _k1_block()
    rendered = aggregate_system_prompt(["{response 1}", "{response 2}"])
    assert block.startswith(rendered)


def test_template_shape():
    assert AGGREGATE_AND_SYNTHESIZE.endswith("\n\nResponses from models:")
    assert not AGGREGATE_AND_SYNTHESIZE.endswith("\n")


def test_aggregate_system_prompt_numbers_responses():
    assert (
        aggregate_system_prompt(["a", "b", "c"]) == AGGREGATE_AND_SYNTHESIZE + "\n1. a\n2. b\n3. c"
    )


def test_aggregate_system_prompt_single_response():
    assert aggregate_system_prompt(("only",)) == AGGREGATE_AND_SYNTHESIZE + "\n1. only"


def test_aggregate_system_prompt_empty_raises():
    with pytest.raises(ValueError):
        aggregate_system_prompt([])


def test_inject_without_system_message():
    messages = [{"role": "user", "content": "hi"}]
    out = inject_responses(messages, ["x", "y"])
    assert out == [
        {"role": "system", "content": AGGREGATE_AND_SYNTHESIZE + "\n1. x\n2. y"},
        {"role": "user", "content": "hi"},
    ]


def test_inject_with_existing_system_message():
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    out = inject_responses(messages, ["x"])
    assert len(out) == 4
    assert out[0] == {
        "role": "system",
        "content": "Be terse.\n\n" + AGGREGATE_AND_SYNTHESIZE + "\n1. x",
    }
    assert out[1:] == messages[1:]


def test_inject_does_not_mutate_input():
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "q"},
    ]
    before = copy.deepcopy(messages)
    out = inject_responses(messages, ["x"])
    assert messages == before
    assert out is not messages
    assert out[0] is not messages[0]

    plain = [{"role": "user", "content": "q"}]
    plain_before = copy.deepcopy(plain)
    inject_responses(plain, ["x"])
    assert plain == plain_before


def test_inject_empty_responses_raises():
    with pytest.raises(ValueError):
        inject_responses([{"role": "user", "content": "q"}], [])
