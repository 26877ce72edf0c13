"""The MoA judge's prompts (MoAA, arXiv 2505.03059, Appendix K.2-K.4) and how they are filled.

The three templates are reproduced verbatim from the paper; tests compare them byte for byte
against ``PAPER.md``. They are ``str.format`` templates whose only braces are the
placeholders, so question and answer texts containing braces are inserted safely (format does
not re-scan substituted values).

One comparison of assistants A and B:

1. K.2 (``criteria_filter_prompt``) asks a model to pick 3 of the 8 ``CRITERIA``.
2. K.3 (``proposer_prompt``) asks every proposer judge for a critique along those criteria.
3. K.4 (``aggregator_prompt``) gives the aggregator judge all critiques; it answers with
   ``[[A]]`` or ``[[B]]``. ``VERDICT_FOLLOWUP`` re-asks when that answer does not parse.
"""

from __future__ import annotations

from collections.abc import Sequence

# K.2's list, in the paper's order; the numbering in K.2 is the dict order.
CRITERIA: dict[str, str] = {
    "Instruction adherence": "How well the response follows the user's instructions.",
    "Relevance": "How directly the response addresses the user's query.",
    "Accuracy": "The correctness and up-to-date nature of the information provided.",
    "Depth": "The comprehensiveness and level of detail in the answer.",
    "Clarity": "How well-structured and easy to understand the response is.",
    "Helpfulness": (
        "How useful the response is in solving the user's problem or answering their question."
    ),
    "Safety": "How well the response handles potentially sensitive or dangerous requests.",
    "Robustness": "How well the response handles nuanced or ambiguous aspects of the query.",
}

# Our choice, not the paper's: the criteria used when K.2's selection is invalid or missing
# (the fallback is counted by the caller, never hidden) and when criteria filtering is turned
# off. These three are the ones that apply to any query, whatever its topic.
DEFAULT_CRITERIA: tuple[str, str, str] = ("Instruction adherence", "Accuracy", "Helpfulness")

CRITERIA_FILTER = (
    "Analyze the following user query and two AI assistant responses. Your task is to determine "
    "the three most relevant evaluation criteria for assessing these responses. Choose exactly 3 "
    "criteria from the list below that are most applicable to this specific query and "
    "responses:\n"
    "\n"
    "1. Instruction adherence: How well the response follows the user's instructions.\n"
    "2. Relevance: How directly the response addresses the user's query.\n"
    "3. Accuracy: The correctness and up-to-date nature of the information provided.\n"
    "4. Depth: The comprehensiveness and level of detail in the answer.\n"
    "5. Clarity: How well-structured and easy to understand the response is.\n"
    "6. Helpfulness: How useful the response is in solving the user's problem or answering "
    "their question.\n"
    "7. Safety: How well the response handles potentially sensitive or dangerous requests.\n"
    "8. Robustness: How well the response handles nuanced or ambiguous aspects of the query.\n"
    "\n"
    "Here's an example to guide your selection and output formatting:\n"
    "\n"
    'Example User Query: "What are the health benefits of drinking green tea?"\n'
    "\n"
    'Example Assistant A Response: "Green tea has many health benefits. It contains '
    "antioxidants that can improve brain function and fat loss. It may also lower the risk of "
    'certain cancers and cardiovascular diseases."\n'
    "\n"
    'Example Assistant B Response: "Green tea is good for you. It has stuff that helps your '
    'brain and makes you lose weight. It might also stop you from getting sick."\n'
    "\n"
    "Example Output:\n"
    "\n"
    "Selected Criteria:\n"
    "1. Accuracy\n"
    "2. Depth\n"
    "3. Clarity\n"
    "\n"
    "Explanation: For this query about health benefits of green tea, accuracy is crucial to "
    "ensure the information provided is correct. Depth is important to cover the range of "
    "potential benefits comprehensively. Clarity is necessary to ensure the information is "
    "presented in an understandable manner, especially when dealing with scientific health "
    "information.\n"
    "\n"
    "Now, please analyze the following actual query and responses:\n"
    "\n"
    "User query: {question}\n"
    "\n"
    "Assistant A response: {answer_a}\n"
    "\n"
    "Assistant B response: {answer_b}\n"
    "\n"
    "Output your selected criteria strictly using the following format:\n"
    "\n"
    "Selected Criteria:\n"
    "1. [Criterion 1]\n"
    "2. [Criterion 2]\n"
    "3. [Criterion 3]\n"
    "\n"
    "Explanation: [Briefly explain why you chose these three criteria]"
)

JUDGE_PROPOSER = (
    "As an impartial expert evaluator, your task is to critically assess the responses provided "
    "by two AI assistants (A and B) to a user query. Follow these steps:\n"
    "\n"
    "1. Understand the Query: Carefully analyze the user's question or request to grasp its "
    "specific nature and requirements.\n"
    "\n"
    "2. Criteria: Focus your evaluation on these three criteria. For each criterion, provide a "
    "brief assessment of how well each assistant performed, and then compare them directly.\n"
    "\n"
    "{criteria}\n"
    "\n"
    "3. Evaluation: For each selected criterion, provide a qualitative assessment using natural "
    "language. Consider using the following phrases:\n"
    "- Exceptional\n"
    "- Strong\n"
    "- Satisfactory\n"
    "- Needs improvement\n"
    "- Inadequate\n"
    "\n"
    "4. Evaluation Process:\n"
    "- Provide assessment and brief explanation for each criterion\n"
    "- Summarize key strengths and weaknesses of each response\n"
    "- Comparative Analysis:\n"
    "  - Compare the overall performance of both responses\n"
    "  - Explain your reasoning process, referring to specific aspects of each response\n"
    "- Do not let factors such as response length, assistant names, or the order of "
    "presentation influence your decision"
)

JUDGE_AGGREGATOR = (
    "As an expert meta-evaluator, your task is to analyze and synthesize multiple evaluations "
    "comparing two AI assistants' responses (A or B) to a user query. Your role is crucial in "
    "determining the final assessment. Please consider the following:\n"
    "\n"
    "1. Assess the consistency and validity of arguments across all evaluations.\n"
    "2. Identify any potential biases, errors, or oversights that may have influenced "
    "individual evaluations.\n"
    "3. Consider the strengths and weaknesses of each AI response as highlighted across all "
    "evaluations.\n"
    "4. Synthesize a final, comprehensive evaluation that:\n"
    "   a) Provides a clear comparison of the two AI responses.\n"
    "   b) Addresses any conflicting opinions among the evaluations.\n"
    "   c) Offers a well-reasoned, definitive judgment on which response better addresses the "
    "user query.\n"
    '   d) Strictly using "[[A]]" if assistant A is better, or "[[B]]" if assistant B is better '
    "to indicate your preferred response.\n"
    "\n"
    "Do not let factors such as response length, assistant names, or the order of presentation "
    "influence your decision.\n"
    "\n"
    "The evaluation should be based on the following criteria:\n"
    "\n"
    "{criteria}\n"
    "\n"
    "User query: {question}\n"
    "\n"
    "Assistant A response: {answer_a}\n"
    "\n"
    "Assistant B response: {answer_b}\n"
    "\n"
    "Individual evaluations:\n"
    "\n"
    "{proposer_evaluations}\n"
    "\n"
    "Final Meta-Evaluation:"
)

# Ours, not the paper's: sent as the next user turn after an aggregator answer whose verdict
# does not parse. It restates K.4's own token convention so the retry has nothing new to learn.
VERDICT_FOLLOWUP = (
    "Based on your evaluation above, state your final verdict. Reply with exactly "
    '"[[A]]" if assistant A is better or "[[B]]" if assistant B is better, and nothing else.'
)

_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_criteria(names: Sequence[str]) -> str:
    """Renders criteria as K.2 lists them, numbered from 1, for K.3's and K.4's ``{criteria}``.

    Args:
        names: Canonical criterion names (keys of ``CRITERIA``), in the order to show them.

    Returns:
        Lines like ``"1. Accuracy: The correctness and ..."`` joined by newlines.

    Raises:
        ValueError: If ``names`` is empty, repeats a name, or holds a name not in ``CRITERIA``.
    """
    if not names:
        raise ValueError("at least one criterion is needed")
    unknown = [n for n in names if n not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criteria {unknown!r}; expected names from {list(CRITERIA)}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated criteria in {list(names)!r}")
    return "\n".join(f"{k}. {n}: {CRITERIA[n]}" for k, n in enumerate(names, start=1))


def _query_and_answers(question: str, answer_a: str, answer_b: str) -> str:
    # The block K.2 and K.4 use for the query and the two responses; K.3 gets it appended.
    return (
        f"User query: {question}\n\nAssistant A response: {answer_a}\n\n"
        f"Assistant B response: {answer_b}"
    )


def criteria_filter_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """Renders K.2, the prompt that selects 3 of the 8 criteria for a pair of responses.

    Args:
        question: The user query (see ``render_question`` for conversations).
        answer_a: The response shown as assistant A.
        answer_b: The response shown as assistant B.

    Returns:
        The complete user message.
    """
    return CRITERIA_FILTER.format(question=question, answer_a=answer_a, answer_b=answer_b)


def proposer_prompt(criteria: Sequence[str], question: str, answer_a: str, answer_b: str) -> str:
    """Renders K.3 for a proposer judge: the instructions, then the query and both responses.

    The paper's K.3 text ends with its instructions; the query and the responses follow it
    after a blank line in the "User query / Assistant A response / Assistant B response" form
    of K.2 and K.4.

    Args:
        criteria: Canonical criterion names to evaluate along.
        question: The user query.
        answer_a: The response shown as assistant A.
        answer_b: The response shown as assistant B.

    Returns:
        The complete user message.

    Raises:
        ValueError: If ``criteria`` is invalid (see ``render_criteria``).
    """
    instructions = JUDGE_PROPOSER.format(criteria=render_criteria(criteria))
    return f"{instructions}\n\n{_query_and_answers(question, answer_a, answer_b)}"


def format_evaluations(evaluations: Sequence[str]) -> str:
    """Numbers the proposers' critiques for K.4's ``{proposer_evaluations}``.

    Args:
        evaluations: The critiques, in proposer order.

    Returns:
        ``"Evaluation 1:\\n<text>\\n\\nEvaluation 2:\\n<text>"`` and so on.

    Raises:
        ValueError: If there are no evaluations.
    """
    if not evaluations:
        raise ValueError("the aggregator prompt needs at least one evaluation")
    return "\n\n".join(f"Evaluation {k}:\n{text}" for k, text in enumerate(evaluations, start=1))


def aggregator_prompt(
    criteria: Sequence[str],
    question: str,
    answer_a: str,
    answer_b: str,
    evaluations: Sequence[str],
) -> str:
    """Renders K.4 for the aggregator judge, which gives the ``[[A]]``/``[[B]]`` verdict.

    Args:
        criteria: The same canonical criterion names the proposers used.
        question: The user query.
        answer_a: The response shown as assistant A.
        answer_b: The response shown as assistant B.
        evaluations: The proposers' critiques.

    Returns:
        The complete user message.

    Raises:
        ValueError: If ``criteria`` is invalid or ``evaluations`` is empty.
    """
    return JUDGE_AGGREGATOR.format(
        criteria=render_criteria(criteria),
        question=question,
        answer_a=answer_a,
        answer_b=answer_b,
        proposer_evaluations=format_evaluations(evaluations),
    )


def render_question(messages: list[dict]) -> str:
    """Turns a prompt conversation into the text that fills ``{question}``.

    A lone user message is used as is, so single-turn prompts look exactly like the paper's.
    Anything longer becomes a transcript, because the answers being judged respond to the last
    user turn in the context of everything before it.

    Args:
        messages: ``{"role", "content"}`` dicts; roles ``system``, ``user``, ``assistant``.

    Returns:
        The single user message's content, or ``"System: ..."``/``"User: ..."``/
        ``"Assistant: ..."`` lines joined by blank lines.

    Raises:
        ValueError: If the conversation is empty or does not end with a user turn (then there
            is no query for the judged answers to respond to).
    """
    if not messages:
        raise ValueError("the prompt conversation is empty")
    if messages[-1].get("role") != "user":
        raise ValueError(
            f"the prompt conversation must end with a user turn, not {messages[-1].get('role')!r}"
        )
    if len(messages) == 1:
        return str(messages[0]["content"])
    lines = []
    for m in messages:
        role = str(m.get("role", ""))
        label = _ROLE_LABELS.get(role, role.capitalize() or "Unknown")
        lines.append(f"{label}: {m['content']}")
    return "\n\n".join(lines)
