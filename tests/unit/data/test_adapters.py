"""Input adapters: every supported record shape, every reject reason, stable ids."""

from __future__ import annotations

import re

import pytest

from moaa_cluster.data.adapters import Conversation, Reject, stable_id, to_conversation

# -- accepted formats ----------------------------------------------------------------------


def test_turns_format():
    conv = to_conversation({"turns": ["first", "second"], "category": "writing"})
    assert conv == Conversation(turns=("first", "second"), system=None, source_id=None)


def test_turns_with_system_field():
    conv = to_conversation({"turns": ["q"], "system": "Be brief."})
    assert conv.turns == ("q",)
    assert conv.system == "Be brief."


def test_messages_format_with_leading_system():
    conv = to_conversation(
        {
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "u2"},
            ]
        }
    )
    assert conv.turns == ("u1", "u2")
    assert conv.system == "You are helpful."


def test_messages_system_wins_over_system_field():
    conv = to_conversation(
        {
            "system": "field",
            "messages": [{"role": "system", "content": "inline"}, {"role": "user", "content": "u"}],
        }
    )
    assert conv.system == "inline"


def test_ultrachat_messages_drop_assistant_answers():
    record = {
        "prompt": "u1",
        "prompt_id": "abc123",
        "messages": [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "old answer 1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "old answer 2"},
        ],
    }
    conv = to_conversation(record)
    assert conv.turns == ("u1", "u2")
    assert conv.system is None
    assert "old answer 1" not in conv.turns and "old answer 2" not in conv.turns
    assert conv.source_id == "abc123"


def test_original_ultrachat_data_alternating_list():
    conv = to_conversation({"id": 7, "data": ["u1", "a1", "u2", "a2", "u3"]})
    assert conv.turns == ("u1", "u2", "u3")
    assert conv.source_id == "7"


def test_instruction_format():
    conv = to_conversation({"source": "evol_instruct", "instruction": "Do the thing."})
    assert conv.turns == ("Do the thing.",)
    assert conv.system is None


def test_plain_prompt_string():
    assert to_conversation({"prompt": "Hello?"}).turns == ("Hello?",)


def test_trl_prompt_message_list():
    conv = to_conversation(
        {
            "prompt": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
            ]
        }
    )
    assert conv.turns == ("hi",)
    assert conv.system == "sys"


def test_first_matching_field_wins():
    conv = to_conversation({"turns": ["from turns"], "instruction": "from instruction"})
    assert conv.turns == ("from turns",)


# -- rejects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, message",
    [
        (["not", "a", "dict"], "record must be a JSON object, got list"),
        ("text", "record must be a JSON object, got str"),
        (None, "record must be a JSON object, got NoneType"),
        (
            {"foo": "bar"},
            "record has none of the fields turns, messages, data, instruction, prompt",
        ),
        ({}, "record has none of the fields"),
        ({"prompt": ""}, "'prompt' is empty"),
        ({"prompt": "   \n\t"}, "'prompt' is empty"),
        ({"instruction": "  "}, "'instruction' is empty"),
        ({"instruction": 5}, "'instruction' must be a string, got int"),
        ({"prompt": 3.5}, "'prompt' must be a string, got float"),
        ({"turns": "one string"}, "'turns' must be a non-empty list of strings"),
        ({"turns": []}, "'turns' must be a non-empty list of strings"),
        ({"turns": ["ok", 3]}, "turns[1] must be a string, got int"),
        ({"turns": ["ok", " "]}, "turns[1] is empty"),
        ({"data": "x"}, "'data' must be a non-empty list of alternating user/assistant strings"),
        ({"data": []}, "'data' must be a non-empty list"),
        ({"data": [None, "a"]}, "data[0] must be a string, got NoneType"),
        ({"messages": []}, "'messages' must be a non-empty list of {role, content}"),
        ({"messages": {"role": "user"}}, "'messages' must be a non-empty list of {role, content}"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "q"},
                ]
            },
            "conversation starts with an assistant turn",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "hi"},
                ]
            },
            "conversation starts with an assistant turn",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "messages[1] breaks user/assistant alternation (got user)",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "messages[2] breaks user/assistant alternation (got assistant)",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0] has unsupported role 'tool'",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "late"}]},
            "messages[1] has unsupported role 'system'",
        ),
        (
            {"messages": [{"role": "user"}]},
            "messages[0] must be an object with 'role' and 'content'",
        ),
        (
            {"messages": [{"content": "x"}]},
            "messages[0] must be an object with 'role' and 'content'",
        ),
        (
            {"messages": ["just text"]},
            "messages[0] must be an object with 'role' and 'content'",
        ),
        (
            {"messages": [{"role": "user", "content": 1}]},
            "messages[0].content must be a string, got int",
        ),
        (
            {"messages": [{"role": "system", "content": "s"}]},
            "conversation has no user turn",
        ),
        (
            {"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "q"}]},
            "system message is empty",
        ),
        ({"prompt": []}, "must be a non-empty list of {role, content}"),
        (
            {"prompt": [{"role": "assistant", "content": "a"}]},
            "conversation starts with an assistant turn",
        ),
        ({"turns": ["q"], "system": 3}, "'system' must be a string, got int"),
        ({"turns": ["q"], "system": ""}, "'system' is empty"),
    ],
)
def test_rejects(record, message):
    with pytest.raises(Reject, match=re.escape(message)):
        to_conversation(record)


def test_reject_is_value_error():
    assert issubclass(Reject, ValueError)


def test_system_none_is_ignored():
    assert to_conversation({"turns": ["q"], "system": None}).system is None


# -- source ids ----------------------------------------------------------------------------


def test_source_id_from_id():
    assert to_conversation({"id": "abc", "turns": ["q"]}).source_id == "abc"


def test_source_id_from_question_id():
    assert to_conversation({"question_id": 81, "turns": ["q"]}).source_id == "81"


def test_source_id_prefers_id_over_question_id():
    assert to_conversation({"question_id": 1, "id": "x", "turns": ["q"]}).source_id == "x"


def test_source_id_absent():
    assert to_conversation({"turns": ["q"]}).source_id is None


# -- stable_id -----------------------------------------------------------------------------


def test_stable_id_deterministic_and_shape():
    conv = Conversation(turns=("q1", "q2"))
    a = stable_id("demo", conv)
    assert a == stable_id("demo", conv)
    assert re.fullmatch(r"[0-9a-f]{20}", a)


def test_stable_id_equal_for_equal_content():
    c1 = to_conversation({"turns": ["q1", "q2"], "id": "one"})
    c2 = to_conversation({"prompt": "q1", "id": "two"})
    assert stable_id("src", c1) == stable_id("src", to_conversation({"turns": ["q1", "q2"]}))
    assert stable_id("src", c2) == stable_id("src", to_conversation({"instruction": "q1"}))


def test_stable_id_includes_history_answers():
    """Same user turns with different assistant history are different stage-2 prompts."""

    def conv(answer: str):
        return to_conversation(
            {
                "messages": [
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": "q2"},
                ]
            }
        )

    assert conv("x").answers == ("x",)
    assert stable_id("src", conv("x")) != stable_id("src", conv("y"))
    assert stable_id("src", conv("x")) == stable_id("src", conv("x"))
    # answer-less inputs keep the id they had before answers were recorded
    assert stable_id("src", to_conversation({"turns": ["q1", "q2"]})) == stable_id(
        "src", Conversation(turns=("q1", "q2"))
    )


def test_stable_id_changes_with_source_and_text():
    base = Conversation(turns=("q1", "q2"))
    ref = stable_id("demo", base)
    assert stable_id("other", base) != ref
    assert stable_id("demo", Conversation(turns=("q1!", "q2"))) != ref
    assert stable_id("demo", Conversation(turns=("q1", "q2 "))) != ref
    assert stable_id("demo", Conversation(turns=("q1",))) != ref
    assert stable_id("demo", Conversation(turns=("q1", "q2"), system="s")) != ref


@pytest.mark.parametrize(
    "source, record, expected",
    [
        (
            "mt",
            {
                "question_id": 81,
                "turns": [
                    "Compose a travel blog post.",
                    "Rewrite it starting every sentence with A.",
                ],
            },
            "83065bb5ef4c93161633",
        ),
        (
            "uc",
            {
                "prompt_id": "p1",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "u2"},
                ],
            },
            "9ec46d2feda6b08dcfc8",
        ),
        ("data", {"id": 7, "data": ["u1", "a1", "u2"]}, "515bddd1d4229e0e09f0"),
        ("uf", {"instruction": "Do the thing.", "system": "sys"}, "ad7ad7196e9566aec16e"),
        ("trl", {"prompt": [{"role": "user", "content": "hi"}]}, "03d7f5402639dbd5d28b"),
        ("arena", {"uid": "x", "prompt": "café — 😀"}, "4a637e67380fc2c4e0ef"),
    ],
)
def test_stable_id_is_pinned(source, record, expected):
    """Ids computed before the new chat formats (issue #13): finished rows stay finished."""
    assert stable_id(source, to_conversation(record)) == expected


# -- OpenAI content-part lists ---------------------------------------------------------------


def _parts(*texts):
    return [{"type": "text", "text": t} for t in texts]


def test_content_parts_in_user_system_and_assistant_messages():
    conv = to_conversation(
        {
            "messages": [
                {"role": "system", "content": _parts("Be", "brief.")},
                {"role": "user", "content": _parts("line one", "line two")},
                {"role": "assistant", "content": _parts("a1", "a1 more")},
                {"role": "user", "content": "plain u2"},
            ]
        }
    )
    assert conv.system == "Be\nbrief."
    assert conv.turns == ("line one\nline two", "plain u2")
    assert conv.answers == ("a1\na1 more",)


def test_content_parts_give_the_same_id_as_the_joined_string():
    as_parts = to_conversation({"messages": [{"role": "user", "content": _parts("a", "b")}]})
    as_text = to_conversation({"messages": [{"role": "user", "content": "a\nb"}]})
    assert stable_id("s", as_parts) == stable_id("s", as_text)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}],
            "messages[0].content[1] is a 'image_url' part; only text parts are supported",
        ),
        ([{"type": "input_audio", "input_audio": {}}], "is a 'input_audio' part"),
        ([], "messages[0].content is an empty list of content parts"),
        (["bare string"], "messages[0].content[0] must be a content part {type, text}"),
        ([{"text": "no type"}], "messages[0].content[0] must be a content part {type, text}"),
        ([{"type": "text", "text": 3}], "messages[0].content[0].text must be a string, got int"),
        ([{"type": "text", "text": " "}], "messages[0].content is empty"),
    ],
)
def test_content_part_rejects(content, message):
    with pytest.raises(Reject, match=re.escape(message)):
        to_conversation({"messages": [{"role": "user", "content": content}]})


def test_non_text_part_in_an_assistant_answer_rejects():
    record = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "user", "content": "q2"},
        ]
    }
    with pytest.raises(Reject, match="messages\\[1\\].content\\[0\\] is a 'refusal' part"):
        to_conversation(record)


# -- ShareGPT --------------------------------------------------------------------------------


def test_sharegpt_from_value():
    conv = to_conversation(
        {
            "id": "sg1",
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "u1"},
                {"from": "gpt", "value": "a1"},
                {"from": "Human", "value": "u2"},
                {"from": "chatgpt", "value": "a2"},
                {"from": "user", "value": "u3"},
                {"from": "model", "value": "a3"},
            ],
        }
    )
    assert conv == Conversation(
        turns=("u1", "u2", "u3"), system="sys", source_id="sg1", answers=("a1", "a2", "a3")
    )


def test_sharegpt_role_content_keys_and_parts():
    conv = to_conversation(
        {
            "conversations": [
                {"role": "user", "content": _parts("x", "y")},
                {"role": "assistant", "content": "a"},
            ],
            "system": "from the field",
        }
    )
    assert conv.turns == ("x\ny",) and conv.answers == ("a",)
    assert conv.system == "from the field"


def test_sharegpt_is_the_last_format_tried():
    """A record that also holds an earlier field keeps the conversation (and id) it had."""
    conv = to_conversation(
        {"prompt": "the prompt", "conversations": [{"from": "human", "value": "other"}]}
    )
    assert conv.turns == ("the prompt",)


@pytest.mark.parametrize(
    "conversations, message",
    [
        ([], "'conversations' must be a non-empty list of {from, value}"),
        ("text", "'conversations' must be a non-empty list of {from, value}"),
        (
            [{"from": "human"}],
            "conversations[0] must be an object with 'from' and 'value' (or 'role' and 'content')",
        ),
        (
            [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}],
            "conversations[1] has unsupported role 'function_call'",
        ),
        ([{"from": "gpt", "value": "a"}], "conversation starts with an assistant turn"),
        (
            [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
            "conversations[1] breaks user/assistant alternation (got user)",
        ),
        ([{"from": "human", "value": 5}], "conversations[0].content must be a string, got int"),
        ([{"from": ["human"], "value": "q"}], "conversations[0] has unsupported role ['human']"),
    ],
)
def test_sharegpt_rejects(conversations, message):
    with pytest.raises(Reject, match=re.escape(message)):
        to_conversation({"conversations": conversations})


def test_reject_is_importable_from_adapters_and_records():
    from moaa_cluster.data.records import Reject as SharedReject

    assert Reject is SharedReject


# -- built-in demo set ---------------------------------------------------------------------


def test_demo_set_is_valid():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "moaa_cluster" / "data" / "demo.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    convs = [to_conversation(r) for r in records]
    assert sum(len(c.turns) == 1 for c in convs) == 32
    assert sum(len(c.turns) == 2 for c in convs) == 8
    assert len(convs) == 40
    assert all(isinstance(r["category"], str) and r["category"] for r in records)
    ids = {stable_id("demo", c) for c in convs}
    assert len(ids) == len(convs)  # no duplicates
    assert all(len(t.split()) < 60 for c in convs for t in c.turns)
