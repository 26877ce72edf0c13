"""The paper's Aggregate-and-Synthesize prompt (MoAA, arXiv 2505.03059, Appendix K.1).

The template text is reproduced verbatim from the paper; tests compare it byte for byte.
As in the original Mixture-of-Agents code, the numbered responses are appended to the
template and the result becomes the system message placed ahead of the conversation.
"""

from __future__ import annotations

from collections.abc import Sequence

AGGREGATE_AND_SYNTHESIZE = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply to "
    "the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n"
    "\n"
    "Responses from models:"
)


def aggregate_system_prompt(responses: Sequence[str]) -> str:
    """Renders K.1 with the responses numbered from 1, one per line after the header."""
    if not responses:
        raise ValueError("the aggregate prompt needs at least one response")
    numbered = "".join(f"\n{i}. {text}" for i, text in enumerate(responses, start=1))
    return AGGREGATE_AND_SYNTHESIZE + numbered


def inject_responses(messages: list[dict], responses: Sequence[str]) -> list[dict]:
    """Returns a copy of ``messages`` with K.1 and the responses in the system message.

    An existing system message keeps its text and gets the aggregate prompt appended after a
    blank line; otherwise a new system message is put first.
    """
    system = aggregate_system_prompt(responses)
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{system}"
    else:
        out.insert(0, {"role": "system", "content": system})
    return out
