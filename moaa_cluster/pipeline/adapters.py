"""Input adapters: turn a raw record of any supported format into a validated conversation.

Pure functions, no I/O. Every problem is reported as a :class:`Reject` with a specific
reason so the caller can write it to the run's ``rejects`` file; nothing is dropped silently.

Supported shapes (first match wins):
  * MT-Bench style ``turns``: list of user messages.
  * UltraChat ``messages`` (list of ``{role, content}``) or plain ``messages``.
  * original UltraChat ``data``: alternating user / assistant strings.
  * UltraFeedback ``instruction``, or a plain ``prompt``: one user message.
Existing assistant answers are dropped: the mixture writes new ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

FORMATS = ("turns", "messages", "data", "instruction", "prompt")


class Reject(ValueError):
    """A record that cannot be used, with the reason recorded in ``rejects``."""


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


def _from_messages(messages: object) -> tuple[list[str], str | None, list[str]]:
    if not isinstance(messages, list) or not messages:
        raise Reject("'messages' must be a non-empty list of {role, content}")
    system = None
    turns: list[str] = []
    answers: list[str] = []
    expect = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise Reject(f"messages[{i}] must be an object with 'role' and 'content'")
        role = message["role"]
        if role == "system" and i == 0:
            system = _text(message["content"], "system message")
            continue
        if role not in ("user", "assistant"):
            raise Reject(f"messages[{i}] has unsupported role {role!r}")
        if role != expect:
            if not turns and role == "assistant":
                raise Reject("conversation starts with an assistant turn")
            raise Reject(f"messages[{i}] breaks user/assistant alternation (got {role})")
        if role == "user":
            turns.append(_text(message["content"], f"messages[{i}].content"))
        elif isinstance(message["content"], str):
            answers.append(message["content"])
        expect = "assistant" if role == "user" else "user"
    if not turns:
        raise Reject("conversation has no user turn")
    return turns, system, answers


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
            turns, system, answers = _from_messages(prompt)
        else:
            turns = [_text(prompt, "'prompt'")]
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
