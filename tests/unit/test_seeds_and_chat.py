"""The one seed formula every seeded call uses, and the one conversation builder."""

from __future__ import annotations

import pytest

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.seeds import derive_seed


@pytest.mark.parametrize(
    ("base", "parts", "seed"),
    [  # values of the formula each caller wrote out before it had one home: must not change
        (7, ("row-1", "candidate3"), 1076618145),  # prefs candidate
        (0, ("q/1", "turn0"), 582237412),  # eval, the model's first turn
        (0, ("q/1:base", "turn1"), 958677185),  # eval, a baseline model's second turn
        (42, ("key", "verdict"), 16881890),  # judge
    ],
)
def test_derive_seed_is_the_formula_every_caller_used(base, parts, seed):
    assert derive_seed(base, *parts) == seed
    assert 0 <= seed < 2**31


def test_no_base_seed_means_unseeded():
    assert derive_seed(None, "row", "turn0") is None


def test_chat_messages_interleaves_turns_and_answers():
    assert chat_messages(None, ["q1", "q2"], ["a1"]) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert chat_messages("sys", ["q"], ["a", "extra"]) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert chat_messages("", ["q"]) == [{"role": "user", "content": "q"}]  # empty: no system
