"""Parsing criteria selections (K.2) and verdicts (K.4) from messy small-model output."""

from __future__ import annotations

import pytest

from moaa_cluster.judge.parse import Verdict, parse_criteria, parse_verdict

ADC = ("Accuracy", "Depth", "Clarity")

# --- criteria: accepted --------------------------------------------------------------------------

CRITERIA_OK = {
    "paper_format": (
        "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity\n\n"
        "Explanation: Accuracy matters most here.",
        ADC,
    ),
    "bold_with_definitions": (
        "**Selected Criteria:**\n"
        "1. **Accuracy**: The correctness and up-to-date nature of the information provided.\n"
        "2. **Depth** - The comprehensiveness and level of detail in the answer.\n"
        "3. **Clarity** (How well-structured and easy to understand the response is.)\n",
        ADC,
    ),
    "explanation_mentions_other_criteria": (
        "Selected Criteria:\n"
        "1. Instruction adherence\n2. Helpfulness\n3. Safety\n\n"
        "Explanation: Safety matters because the user asks about chemicals. Relevance and "
        "Depth are less important; Accuracy is covered by Helpfulness.\n"
        "- Robustness is not needed.\n- Clarity: both are clear.",
        ("Instruction adherence", "Helpfulness", "Safety"),
    ),
    "explanation_as_restarted_numbered_list": (
        "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity\n\n"
        "1. Relevance: not an issue\n2. Safety: not an issue\n",
        ADC,
    ),
    "lowercase_and_trailing_punctuation": (
        "selected criteria:\n1. accuracy.\n2. instruction adherence,\n3. relevance;\n",
        ("Accuracy", "Instruction adherence", "Relevance"),
    ),
    "markdown_heading_and_bullets": (
        "### Selected Criteria\n\n- Accuracy\n- Helpfulness\n- Depth\n\n### Explanation\n...",
        ("Accuracy", "Helpfulness", "Depth"),
    ),
    "star_bullets_with_bold": (
        "Selected Criteria:\n* **Relevance**\n* **Accuracy**\n* **Robustness**\n",
        ("Relevance", "Accuracy", "Robustness"),
    ),
    "bold_numbered_items": (
        "Selected Criteria:\n**1. Safety**\n**2. Accuracy**\n**3. Helpfulness**",
        ("Safety", "Accuracy", "Helpfulness"),
    ),
    "nested_definitions": (
        "Selected Criteria:\n1. Accuracy\n   - The correctness of the facts.\n"
        "2. Depth\n   - How much detail.\n3. Clarity\n   - Structure.\n",
        ADC,
    ),
    "copied_template_brackets": (
        "Selected Criteria:\n1. [Accuracy]\n2. [Depth]\n3. [Clarity]\n\nExplanation: [...]",
        ADC,
    ),
    "parenthesised_numbers": (
        "Selected Criteria:\n(1) Accuracy\n(2) Depth\n(3) Clarity",
        ADC,
    ),
    "inline_on_header_line": (
        "Selected Criteria: Accuracy, Depth, and Clarity.\nExplanation: ...",
        ADC,
    ),
    "header_line_starts_list": (
        "Selected Criteria: 1. Accuracy\n2. Depth\n3. Clarity\n",
        ADC,
    ),
    "plain_lines_after_header": (
        "Selected Criteria:\nAccuracy\nDepth\nClarity\n\nExplanation: Depth matters.",
        ADC,
    ),
    "missing_header": (
        "Based on the query, the three most relevant criteria are:\n\n"
        "1. **Helpfulness**: the user needs a working recipe.\n"
        "2. **Accuracy**: quantities must be right.\n"
        "3. **Clarity**: steps must be easy to follow.\n\n"
        "Depth and Safety matter less here.",
        ("Helpfulness", "Accuracy", "Clarity"),
    ),
    "missing_header_after_reasoning_list": (
        "Let me think.\n- The query is a math question\n- Both answers give a number\n\n"
        "1. Accuracy\n2. Clarity\n3. Depth\n",
        ("Accuracy", "Clarity", "Depth"),
    ),
    "preamble_then_header": (
        "Sure! Here is my analysis.\n\nSelected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity",
        ADC,
    ),
    "header_in_prose_then_list": (
        "The selected criteria are as follows.\n1. Accuracy\n2. Depth\n3. Clarity",
        ADC,
    ),
    "keeps_listing_explanations": (
        "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity\n"
        "4. Accuracy is crucial because the user asks about medication doses.\n"
        "5. Depth matters since Assistant B is superficial.\n",
        ADC,
    ),
    "revisits_picked_criterion": (
        "Selected Criteria:\n- Accuracy\n- Depth\n- Clarity\n- Accuracy: the key criterion\n",
        ADC,
    ),
    "trailing_whitespace_and_crlf": (
        "Selected Criteria:  \r\n1. Accuracy  \r\n2. Depth\t\r\n3. Clarity   \r\n\r\n",
        ADC,
    ),
    "hyphenated_name": (
        "Selected Criteria:\n1. Instruction-adherence\n2. Safety\n3. Relevance",
        ("Instruction adherence", "Safety", "Relevance"),
    ),
    "unicode_bullets_and_dashes": (
        "Selected Criteria:\n\u2022 Accuracy \u2014 correctness\n\u2022 Depth \u2013 detail\n"
        "\u2022 Clarity",
        ADC,
    ),
}


@pytest.mark.parametrize("case", sorted(CRITERIA_OK))
def test_parse_criteria_accepts(case):
    text, expected = CRITERIA_OK[case]
    assert parse_criteria(text) == expected


# --- criteria: rejected (no guessing) --------------------------------------------------------------

CRITERIA_BAD = {
    "two_items": "Selected Criteria:\n1. Accuracy\n2. Depth\n\nExplanation: ...",
    "four_items": "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity\n4. Safety\n",
    "four_bullets_bold": "Selected Criteria:\n- **Accuracy**\n- **Depth**\n- **Clarity**\n- **Relevance**",
    "repeated_item": "Selected Criteria:\n1. Accuracy\n2. Accuracy\n3. Depth",
    "made_up_criterion": "Selected Criteria:\n1. Accuracy\n2. Creativity\n3. Depth",
    "made_up_fourth_pick": "Selected Criteria:\n1. Accuracy\n2. Depth\n3. Clarity\n4. Creativity",
    "combined_item": "Selected Criteria:\n1. Accuracy and Depth\n2. Clarity\n3. Safety",
    "template_echo": "Selected Criteria:\n1. [Criterion 1]\n2. [Criterion 2]\n3. [Criterion 3]",
    "prose_only": "I think accuracy, depth and clarity are the most important criteria here.",
    "empty": "",
    "header_no_list": "Selected Criteria:\n\nI cannot decide.",
    "whole_list_restated": (
        "1. Instruction adherence\n2. Relevance\n3. Accuracy\n4. Depth\n5. Clarity\n"
        "6. Helpfulness\n7. Safety\n8. Robustness"
    ),
    "inline_two": "Selected Criteria: Accuracy, Depth",
    "synonym": "Selected Criteria:\n1. Correctness\n2. Depth\n3. Clarity",
    "bad_header_list_not_rescued": (
        "Selected Criteria:\n1. Accuracy\n2. Depth\n\nOther list:\n1. Accuracy\n2. Depth\n3. Clarity"
    ),
}


@pytest.mark.parametrize("case", sorted(CRITERIA_BAD))
def test_parse_criteria_rejects(case):
    assert parse_criteria(CRITERIA_BAD[case]) is None


def test_parse_criteria_keeps_order():
    text = "Selected Criteria:\n1. Clarity\n2. Accuracy\n3. Depth"
    assert parse_criteria(text) == ("Clarity", "Accuracy", "Depth")


# --- verdicts ----------------------------------------------------------------------------------------

VERDICTS = {
    # strict: one kind of token, any number of times
    "strict_end": ("Both are good, but A is more accurate.\n\n[[A]]", Verdict("A", "strict")),
    "strict_bold": ("Final Meta-Evaluation: **[[B]]**", Verdict("B", "strict")),
    "strict_repeated": ("[[B]] ... as said, [[B]].", Verdict("B", "strict")),
    "strict_trailing_whitespace": ("Verdict: [[A]]   \n\n  \t", Verdict("A", "strict")),
    "strict_wins_over_lenient_wording": (
        "Assistant A is better at style, but overall [[B]]",
        Verdict("B", "strict"),
    ),
    # both kinds
    "both_unresolved": ("I can't choose between [[A]] and [[B]].", Verdict(None, "both")),
    "both_echo_then_final_line": (
        'I must answer "[[A]]" if assistant A is better or "[[B]]" otherwise.\n'
        "Assistant B covers more cases.\n\nFinal verdict: [[B]]",
        Verdict("B", "lenient"),
    ),
    "both_then_token_alone": ("Not [[A]]... rather [[B]].\n[[A]]\n", Verdict("A", "lenient")),
    "both_last_line_mentions_other": (
        "[[A]] or [[B]]?\nAssistant A is clear, unlike Assistant B, so [[A]]",
        Verdict(None, "both"),
    ),
    "both_last_line_is_discussion": (
        "[[A]] or [[B]]?\nThe second response handles the edge case of empty input "
        "correctly and explains why, which the first response never does [[B]]",
        Verdict(None, "both"),
    ),
    "both_on_last_line": ("Final verdict: [[A]] / [[B]]", Verdict(None, "both")),
    # lenient, tier 1
    "lenient_lowercase_double": ("My verdict: [[b]]", Verdict("B", "lenient")),
    "lenient_spaced_double": ("[[ A ]]", Verdict("A", "lenient")),
    "lenient_double_assistant": ("[[Assistant B]]", Verdict("B", "lenient")),
    "lenient_single_bracket": ("Final Verdict: [A]", Verdict("A", "lenient")),
    "lenient_final_verdict_letter": ("...\nFinal verdict: B", Verdict("B", "lenient")),
    "lenient_final_verdict_bold_letter": ("**Final Verdict:** **A**.", Verdict("A", "lenient")),
    "lenient_verdict_assistant": (
        "Assistant A is better written. Verdict: Assistant B, for accuracy.",
        Verdict("B", "lenient"),
    ),
    "lenient_answer_is_response": (
        "The final answer is Response A.",
        Verdict("A", "lenient"),
    ),
    # lenient, tier 2
    "lenient_bold_letter": ("After weighing everything: **B**", Verdict("B", "lenient")),
    # lenient, tier 3
    "lenient_is_better": (
        "Assistant A is better because it cites sources.",
        Verdict("A", "lenient"),
    ),
    "lenient_is_clearly_better": ("Response B is clearly better.", Verdict("B", "lenient")),
    "lenient_better_than": (
        "Assistant B is better than Assistant A overall.",
        Verdict("B", "lenient"),
    ),
    "lenient_better_response_is": (
        "Overall, the better response is Assistant B.",
        Verdict("B", "lenient"),
    ),
    "lenient_better_response_is_bare": ("The stronger answer is A.", Verdict("A", "lenient")),
    "lenient_prefer": ("I prefer Assistant A.", Verdict("A", "lenient")),
    "lenient_worse": ("Assistant A is worse on every criterion.", Verdict("B", "lenient")),
    "lenient_bare_letter_better": ("In summary, B is better.", Verdict("B", "lenient")),
    "lenient_tier1_beats_tier3": (
        "Assistant A is better in tone, Assistant B is better in accuracy.\nVerdict: B",
        Verdict("B", "lenient"),
    ),
    # none
    "none_empty": ("", Verdict(None, "none")),
    "none_no_verdict": ("Both responses have merits and flaws.", Verdict(None, "none")),
    "none_conflicting_wording": (
        "Assistant A is better in tone, but Assistant B is better in accuracy.",
        Verdict(None, "none"),
    ),
    "none_negated": ("Assistant A is not better than Assistant B.", Verdict(None, "none")),
    "none_tie_wording": ("Final verdict: A tie.", Verdict(None, "none")),
    "none_article_a": ("A better answer would cite sources.", Verdict(None, "none")),
    "none_conflicting_tier1": ("[A] is short; [B] is long.", Verdict(None, "none")),
    "none_truncated": ("The final verdict is [[", Verdict(None, "none")),
}


@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_parse_verdict(case):
    text, expected = VERDICTS[case]
    assert parse_verdict(text) == expected


def test_parse_verdict_recovery_outputs():
    # What constrained decoding of the follow-up can return.
    assert parse_verdict("[[A]]") == Verdict("A", "strict")
    assert parse_verdict("[[B]]") == Verdict("B", "strict")


def test_verdict_is_frozen():
    v = parse_verdict("[[A]]")
    with pytest.raises(AttributeError):
        v.winner = "B"  # type: ignore[misc]
