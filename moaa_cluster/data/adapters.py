"""Input adapters: turn a raw record of any supported format into a validated conversation.

Pure functions, no I/O. Every problem is reported as a :class:`Reject` with a specific
reason so the caller can write it to the run's ``rejects`` file; nothing is dropped silently.

Supported shapes (first match wins; the order keeps every earlier input's id):
  * MT-Bench style ``turns``: list of user messages.
  * UltraChat ``messages`` (list of ``{role, content}``) or plain ``messages``.
  * original UltraChat ``data``: alternating user / assistant strings.
  * UltraFeedback ``instruction``, or a plain ``prompt``: one user message; a TRL
    conversational ``prompt`` (a message list) is read like ``messages``.
  * ShareGPT ``conversations``: ``{from, value}`` messages (``{role, content}`` also
    accepted), roles ``human``/``user``, ``gpt``/``assistant``/``chatgpt``/``model`` and
    ``system``, read as axolotl and LLaMA-Factory read them.
A message's ``content`` may be a string or an OpenAI list of content parts
(``[{"type": "text", "text": ...}, ...]``): the text parts are joined with ``"\n"``, as vLLM
joins them when it builds the prompt, and a record with any other part (``image_url``,
``input_audio``, ``refusal``, ...) is rejected with the part's type in the reason: the
mixture's models read text only. Assistant messages already in the input are kept as
``answers`` (the history of a multi-turn prompt in stage 2); the mixture writes new ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from moaa_cluster.data.records import Reject

FORMATS = ("turns", "messages", "data", "instruction", "prompt", "conversations")
PART_SEPARATOR = "\n"  # between the text parts of one message (vLLM's chat template input)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}
__all__ = ["FORMATS", "Conversation", "Reject", "stable_id", "to_conversation"]


@dataclass(frozen=True)
class Conversation:
    """A validated input: the user turns to answer and an optional system message."""

    turns: tuple[str, ...]
    system: str | None = None
    source_id: str | None = None
    # assistant answers present in the input, in order (stage 1 ignores them; stage 2 uses
    # them as the history of a multi-turn prompt)
    answers: tuple[str, ...] = ()


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise Reject(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise Reject(f"{what} is empty")
    return value


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _parts_text(parts: list, what: str) -> str:
    """The text of an OpenAI content-part list; any non-text part rejects the record."""
    if not parts:
        raise Reject(f"{what} is an empty list of content parts")
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or "type" not in part:
            raise Reject(f"{what}[{j}] must be a content part {{type, text}}")
        if part["type"] != "text":
            raise Reject(
                f"{what}[{j}] is a {_short(part['type'])} part; only text parts are supported"
            )
        if not isinstance(part.get("text"), str):
            raise Reject(
                f"{what}[{j}].text must be a string, got {type(part.get('text')).__name__}"
            )
        texts.append(part["text"])
    return PART_SEPARATOR.join(texts)


def _content(value: object, what: str) -> str:
    """A user or system message's text: a non-empty string or list of text parts."""
    return _text(_parts_text(value, what) if isinstance(value, list) else value, what)


def _from_messages(
    messages: object, field: str = "messages"
) -> tuple[list[str], str | None, list[str]]:
    if not isinstance(messages, list) or not messages:
        raise Reject(f"'{field}' must be a non-empty list of {{role, content}}")
    system = None
    turns: list[str] = []
    answers: list[str] = []
    expect = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise Reject(f"{field}[{i}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role == "system" and i == 0:
            system = _content(content, "system message")
            continue
        if role not in ("user", "assistant"):
            raise Reject(f"{field}[{i}] has unsupported role {_short(role)}")
        if role != expect:
            if not turns and role == "assistant":
                raise Reject("conversation starts with an assistant turn")
            raise Reject(f"{field}[{i}] breaks user/assistant alternation (got {role})")
        if role == "user":
            turns.append(_content(content, f"{field}[{i}].content"))
        elif isinstance(content, list):
            answers.append(_parts_text(content, f"{field}[{i}].content"))
        elif isinstance(content, str):
            answers.append(content)
        expect = "assistant" if role == "user" else "user"
    if not turns:
        raise Reject("conversation has no user turn")
    return turns, system, answers


def _from_sharegpt(conversations: object) -> tuple[list[str], str | None, list[str]]:
    if not isinstance(conversations, list) or not conversations:
        raise Reject("'conversations' must be a non-empty list of {from, value}")
    messages = []
    for i, message in enumerate(conversations):
        if isinstance(message, dict) and "from" in message and "value" in message:
            role, content = message["from"], message["value"]
        elif isinstance(message, dict) and "role" in message and "content" in message:
            role, content = message["role"], message["content"]
        else:
            raise Reject(
                f"conversations[{i}] must be an object with 'from' and 'value' "
                "(or 'role' and 'content')"
            )
        if isinstance(role, str):
            role = SHAREGPT_ROLES.get(role.lower(), role)
        messages.append({"role": role, "content": content})
    return _from_messages(messages, "conversations")


def to_conversation(record: object) -> Conversation:
    """Normalizes one raw record; raises :class:`Reject` with a reason if unusable."""
    if not isinstance(record, dict):
        raise Reject(f"record must be a JSON object, got {type(record).__name__}")
    system = None
    answers: list[str] = []
    if "turns" in record:
        raw = record["turns"]
        if not isinstance(raw, list) or not raw:
            raise Reject("'turns' must be a non-empty list of strings")
        turns = [_text(t, f"turns[{i}]") for i, t in enumerate(raw)]
    elif "messages" in record:
        turns, system, answers = _from_messages(record["messages"])
    elif "data" in record:
        raw = record["data"]
        if not isinstance(raw, list) or not raw:
            raise Reject("'data' must be a non-empty list of alternating user/assistant strings")
        turns = [_text(t, f"data[{i}]") for i, t in enumerate(raw) if i % 2 == 0]
        answers = [t for i, t in enumerate(raw) if i % 2 == 1 and isinstance(t, str)]
    elif "instruction" in record:
        turns = [_text(record["instruction"], "'instruction'")]
    elif "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, list):  # TRL conversational prompt
            turns, system, answers = _from_messages(prompt, "prompt")
        else:
            turns = [_text(prompt, "'prompt'")]
    elif "conversations" in record:  # last: records that also hold an earlier field keep ids
        turns, system, answers = _from_sharegpt(record["conversations"])
    else:
        raise Reject(f"record has none of the fields {', '.join(FORMATS)}")
    if "system" in record and record["system"] is not None and system is None:
        system = _text(record["system"], "'system'")
    source_id = next(
        (str(record[k]) for k in ("id", "question_id", "prompt_id", "uid") if k in record), None
    )
    return Conversation(
        turns=tuple(turns), system=system, source_id=source_id, answers=tuple(answers)
    )


def stable_id(source: str, conv: Conversation) -> str:
    """Content hash of the source name and the conversation: same input, same id, every run."""
    content = {"source": source, "system": conv.system, "turns": list(conv.turns)}
    if conv.answers:  # only when present, so answer-less inputs keep their ids
        content["answers"] = list(conv.answers)
    payload = json.dumps(content, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]
