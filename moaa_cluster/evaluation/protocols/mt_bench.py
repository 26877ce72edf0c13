"""MT-Bench's judge: single-answer grading, a 1-10 rating per turn.

Source: lm-sys/FastChat at commit 0e6d3e4beaab66f4d3f93db72541a4abab8af28d (Apache-2.0),
``fastchat/llm_judge``: the prompts ``single-v1``, ``single-math-v1``,
``single-v1-multi-turn`` and ``single-math-v1-multi-turn`` of ``data/judge_prompts.jsonl``
(reproduced exactly; the tests compare them byte for byte with a copy of that file), and from
``common.py`` / ``gen_judgment.py``: which categories are reference-guided (``NEED_REF_CATS``),
how the templates are filled, the rating patterns, and the judge's settings.

How FastChat judges, and what this module does:

* **Prompts.** Turn 1 uses ``single-v1``, or ``single-math-v1`` with the reference's first
  turn for math, reasoning and coding questions. Turn 2 uses the multi-turn prompts, which
  show the whole conversation (both questions, both answers, and for the reference-guided
  categories both reference turns) and ask about the second answer. The system message is
  the prompt's ``system_prompt``; the user message its ``prompt_template`` filled with
  ``str.format`` (inserted texts are not scanned again, so braces in them are safe).
* **References.** FastChat takes reference answers from ``reference_answer/gpt-4.jsonl``
  and uses them only for ``NEED_REF_CATS``; the ``reference`` field some questions carry in
  ``question.jsonl`` is not used for judging, and :func:`load_questions` does not read it. A
  reference given for another category is ignored here as it is there.
* **Settings.** FastChat calls GPT-4 as judge with temperature 0 and max_tokens 2048 (1024
  for Claude judges); :data:`JUDGE_SETTINGS` holds the GPT-4 values.
* **Reading the rating** (:func:`parse_rating`): the first match of ``[[x]]``, else the first
  match of ``[x]`` (``re.search``, as FastChat); no match gives None where FastChat records
  -1 and drops it. Our choice on top: a rating outside 1-10 (the scale the prompt sets) is
  no rating either, None, where FastChat would keep e.g. ``[[0]]`` or ``[[100]]``; the
  deciding match is not replaced by a later one.

Nothing here scores an unreadable answer: ``None`` goes back to the caller, which counts it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocols._files import read_jsonl, text_field, turns_field, unique

_SINGLE_V1_SYSTEM = "You are a helpful assistant."

_SINGLE_V1_TEMPLATE = (
    "[Instruction]\n"
    "Please act as an impartial judge and evaluate the quality of the response provided by "
    "an AI assistant to the user question displayed below. Your evaluation should consider "
    "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of "
    "detail of the response. Begin your evaluation by providing a short explanation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on "
    'a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n'
    "\n"
    "[Question]\n"
    "{question}\n"
    "\n"
    "[The Start of Assistant's Answer]\n"
    "{answer}\n"
    "[The End of Assistant's Answer]"
)

_SINGLE_MATH_V1_SYSTEM = "You are a helpful assistant."

_SINGLE_MATH_V1_TEMPLATE = (
    "[Instruction]\n"
    "Please act as an impartial judge and evaluate the quality of the response provided by "
    "an AI assistant to the user question displayed below. Your evaluation should consider "
    "correctness and helpfulness. You will be given a reference answer and the assistant's "
    "answer. Begin your evaluation by comparing the assistant's answer with the reference "
    "answer. Identify and correct any mistakes. Be as objective as possible. After providing "
    "your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[5]]".\n'
    "\n"
    "[Question]\n"
    "{question}\n"
    "\n"
    "[The Start of Reference Answer]\n"
    "{ref_answer_1}\n"
    "[The End of Reference Answer]\n"
    "\n"
    "[The Start of Assistant's Answer]\n"
    "{answer}\n"
    "[The End of Assistant's Answer]"
)

_SINGLE_V1_MULTI_TURN_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by "
    "an AI assistant to the user question displayed below. Your evaluation should consider "
    "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of "
    "detail of the response. You evaluation should focus on the assistant's answer to the "
    "second user question. Begin your evaluation by providing a short explanation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on "
    'a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n'
    "\n"
)

# the two-turn conversation as both multi-turn prompts show it (the math one after the
# reference answers)
_CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n"
    "\n"
    "### User:\n"
    "{question_1}\n"
    "\n"
    "### Assistant A:\n"
    "{answer_1}\n"
    "\n"
    "### User:\n"
    "{question_2}\n"
    "\n"
    "### Assistant A:\n"
    "{answer_2}\n"
    "\n"
    "<|The End of Assistant A's Conversation with User|>"
)

_SINGLE_V1_MULTI_TURN_TEMPLATE = _CONVERSATION

_SINGLE_MATH_V1_MULTI_TURN_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by "
    "an AI assistant to the user question. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer and the assistant's answer. You "
    "evaluation should focus on the assistant's answer to the second question. Begin your "
    "evaluation by comparing the assistant's answer with the reference answer. Identify and "
    "correct any mistakes. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: "
    '"[[rating]]", for example: "Rating: [[5]]".\n'
    "\n"
)

_SINGLE_MATH_V1_MULTI_TURN_TEMPLATE = (
    "<|The Start of Reference Answer|>\n"
    "\n"
    "### User:\n"
    "{question_1}\n"
    "\n"
    "### Reference answer:\n"
    "{ref_answer_1}\n"
    "\n"
    "### User:\n"
    "{question_2}\n"
    "\n"
    "### Reference answer:\n"
    "{ref_answer_2}\n"
    "\n"
    "<|The End of Reference Answer|>\n"
    "\n"
    "\n"
) + _CONVERSATION


@dataclass(frozen=True)
class JudgePrompt:
    """One of FastChat's judge prompts.

    Attributes:
        name: Its name in ``judge_prompts.jsonl``.
        system_prompt: The system message.
        prompt_template: The user message, a ``str.format`` template.
        reference_guided: Whether the template shows a reference answer.
        multi_turn: Whether it grades the second turn (showing both).
    """

    name: str
    system_prompt: str
    prompt_template: str
    reference_guided: bool
    multi_turn: bool


SINGLE_V1 = JudgePrompt("single-v1", _SINGLE_V1_SYSTEM, _SINGLE_V1_TEMPLATE, False, False)
SINGLE_MATH_V1 = JudgePrompt(
    "single-math-v1", _SINGLE_MATH_V1_SYSTEM, _SINGLE_MATH_V1_TEMPLATE, True, False
)
SINGLE_V1_MULTI_TURN = JudgePrompt(
    "single-v1-multi-turn",
    _SINGLE_V1_MULTI_TURN_SYSTEM,
    _SINGLE_V1_MULTI_TURN_TEMPLATE,
    False,
    True,
)
SINGLE_MATH_V1_MULTI_TURN = JudgePrompt(
    "single-math-v1-multi-turn",
    _SINGLE_MATH_V1_MULTI_TURN_SYSTEM,
    _SINGLE_MATH_V1_MULTI_TURN_TEMPLATE,
    True,
    True,
)
JUDGE_PROMPTS: Mapping[str, JudgePrompt] = MappingProxyType(
    {
        p.name: p
        for p in (SINGLE_V1, SINGLE_MATH_V1, SINGLE_V1_MULTI_TURN, SINGLE_MATH_V1_MULTI_TURN)
    }
)

# FastChat's NEED_REF_CATS for MT-Bench (later versions add "arena-hard-200", another set).
NEED_REF_CATS = ("math", "reasoning", "coding")

TEMPERATURE = 0.0
MAX_TOKENS = 2048
JUDGE_SETTINGS: Mapping[str, object] = MappingProxyType(
    {"temperature": TEMPERATURE, "max_tokens": MAX_TOKENS}
)

# common.py's one_score_pattern, then one_score_pattern_backup.
RATING_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\[\[(\d+\.?\d*)\]\]"),
    re.compile(r"\[(\d+\.?\d*)\]"),
)
MIN_RATING = 1.0
MAX_RATING = 10.0


@dataclass(frozen=True)
class MTBenchQuestion:
    """One question of an MT-Bench question file.

    Attributes:
        question_id: The question's id.
        category: ``writing``, ``roleplay``, ``reasoning``, ``math``, ``coding``,
            ``extraction``, ``stem`` or ``humanities``.
        turns: The user's turns (two in MT-Bench).
    """

    question_id: int
    category: str
    turns: tuple[str, ...]


def needs_reference(category: str) -> bool:
    """Whether a category is graded against a reference answer (FastChat's NEED_REF_CATS)."""
    return category in NEED_REF_CATS


def judge_prompt_for(category: str, turn: int) -> JudgePrompt:
    """The prompt FastChat uses for a category's turn 1 or turn 2.

    Raises:
        ValueError: If ``turn`` is not 1 or 2.
    """
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench grades turn 1 or 2, not {turn!r}")
    if needs_reference(category):
        return SINGLE_MATH_V1 if turn == 1 else SINGLE_MATH_V1_MULTI_TURN
    return SINGLE_V1 if turn == 1 else SINGLE_V1_MULTI_TURN


def judge_messages(
    question: MTBenchQuestion,
    answers: Sequence[str],
    turn: int,
    reference: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """The judge's chat messages grading one turn of one answer.

    Args:
        question: The question.
        answers: The model's answers to the question's turns (at least ``turn`` of them).
        turn: 1 or 2.
        reference: The reference answer's turns, needed for reference-guided categories
            (see :func:`needs_reference`) and ignored for the others.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.

    Raises:
        ValueError: If ``turn`` is not 1 or 2, the question, answers or reference have too
            few turns for it (turn 2 needs a two-turn question, as in FastChat), or a
            reference-guided question has no reference.
    """
    prompt = judge_prompt_for(question.category, turn)
    if (turn == 2 and len(question.turns) != 2) or len(answers) < turn:
        raise ValueError(
            f"question {question.question_id}: grading turn {turn} needs "
            f"{'a two-turn question' if turn == 2 else 'a question'} and {turn} answer(s); "
            f"got {len(question.turns)} turn(s) and {len(answers)} answer(s)"
        )
    fields = {"question": question.turns[0], "answer": answers[0]}
    if turn == 2:
        fields = {
            "question_1": question.turns[0],
            "question_2": question.turns[1],
            "answer_1": answers[0],
            "answer_2": answers[1],
        }
    if prompt.reference_guided:
        if reference is None or len(reference) < turn:
            raise ValueError(
                f"question {question.question_id} ({question.category}) is graded against a "
                f"reference answer; need {turn} reference turn(s)"
            )
        fields.update({f"ref_answer_{k}": text for k, text in enumerate(reference[:turn], 1)})
    user = prompt.prompt_template.format(**fields)
    return [{"role": "system", "content": prompt.system_prompt}, {"role": "user", "content": user}]


def parse_rating(text: str) -> float | None:
    """Reads the judge's rating (see the module docstring for the rule).

    Args:
        text: The judge's answer.

    Returns:
        The rating in [1, 10], or None when no pattern matches or the deciding match is out
        of that range.
    """
    for pattern in RATING_PATTERNS:
        match = pattern.search(text)
        if match:
            rating = float(match.group(1))
            return rating if MIN_RATING <= rating <= MAX_RATING else None
    return None


def load_questions(path: str | Path) -> list[MTBenchQuestion]:
    """Reads an MT-Bench question file (JSONL: ``question_id``, ``category``, ``turns``).

    Args:
        path: The file, e.g. a copy of FastChat's ``data/mt_bench/question.jsonl``.

    Returns:
        The questions in file order.

    Raises:
        ConfigError: If the file is unreadable, a record is malformed, or an id repeats.
    """
    what = "MT-Bench question file"
    questions = []
    keys = []
    for where, record in read_jsonl(path, what):
        qid = _question_id(record, where)
        category = text_field(record, "category", where)
        questions.append(MTBenchQuestion(qid, category, turns_field(record.get("turns"), where)))
        keys.append((where, qid))
    unique(keys, f"{what} {path}")
    return questions


def load_reference_answers(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Reads an MT-Bench answer file: each question's answer turns, by question id.

    The format of FastChat's ``reference_answer/gpt-4.jsonl`` (and of its model answer
    files): ``question_id`` and ``choices``, whose first choice holds ``turns``.

    Args:
        path: The file.

    Returns:
        ``question_id -> turns``, in file order.

    Raises:
        ConfigError: If the file is unreadable, a record is malformed, or an id repeats.
    """
    what = "MT-Bench answer file"
    answers: dict[int, tuple[str, ...]] = {}
    keys = []
    for where, record in read_jsonl(path, what):
        qid = _question_id(record, where)
        choices = record.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ConfigError(f"{where}: 'choices' must be a non-empty list of objects")
        answers[qid] = turns_field(choices[0].get("turns"), where)
        keys.append((where, qid))
    unique(keys, f"{what} {path}")
    return answers


def _question_id(record: dict, where: str) -> int:
    qid = record.get("question_id")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ConfigError(f"{where}: 'question_id' must be an integer, got {qid!r}")
    return qid
