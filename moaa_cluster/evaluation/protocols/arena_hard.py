"""Arena-Hard-Auto v0.1's judge: a pairwise verdict against a baseline answer, in both orders.

Source: lmarena/arena-hard-auto at commit 196f6b826783b3da7310e361a805fa36f0be83f3
(Apache-2.0): the judge system prompt is ``utils/judge_utils.py``'s ``OG_ARENA_HARD_PROMPT``,
the user turn, settings and verdict patterns come from ``config/arena-hard-v0.1.yaml``, the
reading of the verdict from ``gen_judgment.py`` (``get_score``) and the labels it accepts from
``show_result.py``. The prompt texts are reproduced exactly; the tests compare them byte for
byte with copies of the benchmark's files.

How this module reproduces it, and where it chooses:

* **Games.** Each question is judged twice (:func:`build_games`): game 1 shows the baseline
  as assistant A and the model as B, game 2 the model as A and the baseline as B -- the
  order of arena-hard-auto's two rounds. Each game records which side the model was.
* **Reading the verdict** (:func:`parse_verdict`), arena-hard-auto's rule at that commit: the
  patterns are tried in order on the judge's text upper-cased; the first pattern with any
  match decides, and of its matches the *last* one is the verdict (a judge that restates
  its verdict, or corrects itself, ends with its final one). Earlier versions of
  arena-hard-auto (2024) used only the double-bracket pattern and gave no verdict when the
  text held different ones; we follow the pinned commit.
* **Labels.** ``show_result.py`` scores ten labels: the five the prompt asks for and their
  mirror spellings ``B=A``, ``A<B``, ``A<<B``, ``B<A``, ``B<<A``. Those are read as the same
  verdicts (``B=A`` is a tie). Anything else the deciding match holds (``[[A]]``, ``[A=B=A]``)
  is no verdict: arena-hard-auto would fail on it when scoring, we return None. We do not
  fall back to an earlier match or the next pattern: the benchmark's rule takes the last
  match of the first pattern that matches.

Nothing here scores an unreadable answer: ``None`` goes back to the caller, which counts it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocols._files import read_jsonl, text_field, unique

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user prompt displayed below. You will be given assistant A's "
    "answer and assistant B's answer. Your job is to evaluate which assistant's answer is "
    "better.\n"
    "\n"
    "Begin your evaluation by generating your own answer to the prompt. You must provide "
    "your answers before judging any answers.\n"
    "\n"
    "When evaluating the assistants' answers, compare both assistants' answers with your "
    "answer. You must identify and correct any mistakes or inaccurate information.\n"
    "\n"
    "Then consider if the assistant's answers are helpful, relevant, and concise. Helpful "
    "means the answer correctly responds to the prompt or follows the instructions. Note "
    "when user prompt has any ambiguity or more than one interpretation, it is more helpful "
    "and appropriate to ask for clarifications or more information from the user than "
    "providing an answer based on assumptions. Relevant means all parts of the response "
    "closely connect or are appropriate to what is being asked. Concise means the response "
    "is clear and not verbose or excessive.\n"
    "\n"
    "Then consider the creativity and novelty of the assistant's answers when needed. "
    "Finally, identify any missing important information in the assistants' answers that "
    "would be beneficial to include when responding to the user prompt.\n"
    "\n"
    "After providing your explanation, you must output only one of the following choices as "
    "your final verdict with a label:\n"
    "\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n"
    "\n"
    'Example output: "My final verdict is tie: [[A=B]]".'
)

USER_TEMPLATE = (
    "<|User Prompt|>\n"
    "{QUESTION}\n"
    "\n"
    "<|The Start of Assistant A's Answer|>\n"
    "{ANSWER_A}\n"
    "<|The End of Assistant A's Answer|>\n"
    "\n"
    "<|The Start of Assistant B's Answer|>\n"
    "{ANSWER_B}\n"
    "<|The End of Assistant B's Answer|>"
)

TEMPERATURE = 0.0
MAX_TOKENS = 4096
JUDGE_SETTINGS: Mapping[str, object] = MappingProxyType(
    {"temperature": TEMPERATURE, "max_tokens": MAX_TOKENS}
)

# config/arena-hard-v0.1.yaml's regex_patterns, in order.
VERDICT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\[\[([AB<>=]+)\]\]"),
    re.compile(r"\[([AB<>=]+)\]"),
)
# From assistant A's side; the order the prompt lists them.
VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_MIRRORED = {"B=A": "A=B", "A<B": "B>A", "A<<B": "B>>A", "B<A": "A>B", "B<<A": "A>>B"}
_CANONICAL = {**{v: v for v in VERDICTS}, **_MIRRORED}

# The model's view of a game, by verdict, when the model was assistant A.
OUTCOMES = ("strong_win", "win", "tie", "loss", "strong_loss")
_OUTCOME_AS_A = dict(zip(VERDICTS, OUTCOMES, strict=True))
_OUTCOME_AS_B = dict(zip(VERDICTS, reversed(OUTCOMES), strict=True))


@dataclass(frozen=True)
class ArenaHardQuestion:
    """One question of an Arena-Hard question file.

    Attributes:
        uid: The question's id.
        category: The file's category field (``"arena-hard-v0.1"`` for v0.1).
        prompt: The user prompt.
    """

    uid: str
    category: str
    prompt: str


@dataclass(frozen=True)
class ArenaHardGame:
    """One of a question's two judge calls.

    Attributes:
        uid: The question's id.
        game: 1 (baseline as A, model as B) or 2 (model as A, baseline as B).
        model_side: ``"A"`` or ``"B"``, where the model's answer was shown.
        messages: The judge's chat messages (system, user).
    """

    uid: str
    game: int
    model_side: str
    messages: list[dict[str, str]]


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The judge's chat messages for one game.

    Args:
        question: The user prompt.
        answer_a: The answer shown as assistant A.
        answer_b: The answer shown as assistant B.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``. The template is filled with
        ``str.format`` as arena-hard-auto does; inserted texts are not scanned again, so
        braces in them are safe.
    """
    user = USER_TEMPLATE.format(QUESTION=question, ANSWER_A=answer_a, ANSWER_B=answer_b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def build_games(
    uid: str, question: str, model_answer: str, baseline_answer: str
) -> tuple[ArenaHardGame, ArenaHardGame]:
    """A question's two games, in arena-hard-auto's order.

    Args:
        uid: The question's id.
        question: The user prompt.
        model_answer: The evaluated model's answer.
        baseline_answer: The baseline's answer (v0.1: gpt-4-0314's).

    Returns:
        Game 1 (baseline as A, model as B) and game 2 (model as A, baseline as B).
    """
    return (
        ArenaHardGame(uid, 1, "B", judge_messages(question, baseline_answer, model_answer)),
        ArenaHardGame(uid, 2, "A", judge_messages(question, model_answer, baseline_answer)),
    )


def parse_verdict(text: str) -> str | None:
    """Reads the judge's verdict (see the module docstring for the rule).

    Args:
        text: The judge's answer.

    Returns:
        One of :data:`VERDICTS` (``"A>>B"``, ``"A>B"``, ``"A=B"``, ``"B>A"``, ``"B>>A"``;
        mirror spellings such as ``B=A`` are returned in this form), or None when no pattern
        matches or the deciding match is not a known label.
    """
    upper = text.upper()
    for pattern in VERDICT_PATTERNS:
        matches = [m for m in pattern.findall(upper) if m != ""]
        if matches:
            return _CANONICAL.get(matches[-1].strip("\n"))
    return None


def model_outcome(verdict: str, model_side: str) -> str:
    """A verdict as the model's result in that game.

    Args:
        verdict: A verdict from :func:`parse_verdict` (mirror spellings also accepted).
        model_side: ``"A"`` or ``"B"``, where the model's answer was shown.

    Returns:
        ``"strong_win"``, ``"win"``, ``"tie"``, ``"loss"`` or ``"strong_loss"``.

    Raises:
        ValueError: If the verdict is not a known label or the side is not A or B.
    """
    canonical = _CANONICAL.get(verdict)
    if canonical is None:
        raise ValueError(f"unknown verdict {verdict!r}; expected one of {VERDICTS}")
    if model_side == "A":
        return _OUTCOME_AS_A[canonical]
    if model_side == "B":
        return _OUTCOME_AS_B[canonical]
    raise ValueError(f"model_side must be 'A' or 'B', got {model_side!r}")


def load_questions(path: str | Path) -> list[ArenaHardQuestion]:
    """Reads an Arena-Hard question file (JSONL: ``uid``, ``category``, ``prompt``).

    Other fields (v0.1's ``cluster``) are ignored. The category is not checked: judging a
    question set of another version with the v0.1 prompt is the caller's choice.

    Args:
        path: The file, e.g. a copy of ``data/arena-hard-v0.1/question.jsonl``.

    Returns:
        The questions in file order.

    Raises:
        ConfigError: If the file is unreadable, a record lacks a field, or a uid repeats.
    """
    what = "Arena-Hard question file"
    rows = read_jsonl(path, what)
    unique([(w, text_field(r, "uid", w)) for w, r in rows], f"{what} {path}")
    return [
        ArenaHardQuestion(r["uid"], text_field(r, "category", w), text_field(r, "prompt", w))
        for w, r in rows
    ]


def _answer_text(record: dict, where: str) -> str:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of messages")
    last = messages[-1]
    if last.get("role") != "assistant":
        raise ConfigError(f"{where}: the last message must be the assistant's answer")
    content = last.get("content")
    if isinstance(content, dict):
        content = content.get("answer")
    if not isinstance(content, str):
        raise ConfigError(f"{where}: the answer must be a string or {{'answer': string}}")
    return content


def load_answers(path: str | Path) -> dict[str, str]:
    """Reads an Arena-Hard model answer file: each question's answer text, by uid.

    The format of ``data/arena-hard-v0.1/model_answer/*.jsonl``: ``uid`` and ``messages``,
    whose last message is the assistant's, its content ``{"answer": str}`` (a plain string
    is accepted too).

    Args:
        path: The file, e.g. a copy of the baseline's ``gpt-4-0314.jsonl``.

    Returns:
        ``uid -> answer text``, in file order.

    Raises:
        ConfigError: If the file is unreadable, a record is malformed, or a uid repeats.
    """
    what = "Arena-Hard answer file"
    rows = read_jsonl(path, what)
    unique([(w, text_field(r, "uid", w)) for w, r in rows], f"{what} {path}")
    return {r["uid"]: _answer_text(r, w) for w, r in rows}
