"""Chat messages (``{"role", "content"}`` dicts, the OpenAI / TRL format) built from turns."""

from __future__ import annotations

from collections.abc import Sequence


def chat_messages(
    system: str | None, turns: Sequence[str], answers: Sequence[str] = ()
) -> list[dict]:
    """A conversation: the system message (when ``system`` is non-empty), then each user turn
    followed by its answer, for as many turns as there are answers.

    ``answers`` shorter than ``turns`` leaves the later turns unanswered (the prompt of the
    next call); answers beyond the last turn are not used.
    """
    messages = [{"role": "system", "content": system}] if system else []
    for t, question in enumerate(turns):
        messages.append({"role": "user", "content": question})
        if t < len(answers):
            messages.append({"role": "assistant", "content": answers[t]})
    return messages
