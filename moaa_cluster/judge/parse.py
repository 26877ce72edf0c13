"""Parsing the judge models' free text: K.2's criteria selection and K.4's verdict.

Small chat models rarely follow the requested format exactly, so both parsers accept common
deviations (markdown, bold, definitions after names, lowercase, lenient verdict wording). They
never guess: when the text does not indicate one answer, they return "no answer" and the
caller falls back (criteria) or re-asks (verdict), counting it either way.

Criteria selection, the rules:

* The selection is the list after the first line that starts with a "Selected Criteria"
  header (markdown decoration allowed) and has a list after it. Without such a header, it is
  the first list anywhere in the text whose first item names a criterion.
* A list is a run of items of one style: numbered (``1.``, ``1)``, ``(1)``), bulleted
  (``-``, ``*``, ``+``, ``•``), or, right after a header only, plain lines that are just a
  criterion name. Blank lines and lines indented deeper than the first item (nested bullets,
  wrapped definitions) are skipped. The list ends at the first other line (e.g.
  ``Explanation: ...``), a change of marker style, or numbering that restarts. A header line
  may also hold the selection inline: ``Selected Criteria: Accuracy, Depth, Clarity``.
* An item names a criterion when its head (bold text, or the text before ``:``, `` - ``,
  ``(`` or ``. ``) is a criterion name, case-insensitively, ignoring markdown, brackets,
  quotes and trailing punctuation. ``**Accuracy**: The correctness ...`` names Accuracy;
  ``Accuracy is key because ...`` does not.
* The first 3 items must name 3 distinct criteria. Later items in the same list are the model
  explaining itself and are ignored, unless one looks like a further pick (a short head of at
  most 4 words) that is not one of the 3 -- then the model picked more than 3 and the result
  is ``None``. Explanations elsewhere in the text never count, whatever criteria they mention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moaa_cluster.judge.prompts import CRITERIA

_CANONICAL = {name.lower(): name for name in CRITERIA}

# --- criteria selection ------------------------------------------------------------------------

_HEADER = re.compile(
    r"^[ \t>#*_-]*selected[ \t]+criteria\b[ \t*_]*(?P<colon>[:\uff1a])?[ \t*_]*(?P<rest>.*)$",
    re.IGNORECASE,
)
# A list item: optional bold opening (``**1. Accuracy**``), a marker, whitespace, text.
_ITEM = re.compile(
    r"^(?P<indent>[ \t]*)(?:\*\*|__)?"
    r"(?:\((?P<pnum>\d{1,2})\)|(?P<num>\d{1,2})[.)]|(?P<bullet>[-*+\u2022]))"
    r"[ \t]+(?P<text>\S.*)$"
)
_LEADING_BOLD = re.compile(r"^(\*\*|__)(.+?)\1")
# Where a criterion's name ends and its definition or commentary begins.
_HEAD_END = re.compile(r":|\(|[\u2013\u2014]|\s-+(?:\s|$)|\.(?:\s|$)")
_STRIP = " \t[]\"'`\u201c\u201d\u2018\u2019.,;:!?*_"
_INLINE_SPLIT = re.compile(r"\s*(?:[,;]|\band\b|(?:^|\s)\(?\d{1,2}[.)](?=\s))\s*", re.IGNORECASE)
# Deeper by this many columns than the list's first item = nested, not a new item.
_NEST = 2
_PICK_WORDS = 4


@dataclass(frozen=True)
class _Item:
    indent: int
    style: str  # "number", "bullet" or "plain"
    number: int | None
    text: str


def _head(text: str) -> str:
    """The part of an item that would be a criterion's name, stripped of decoration."""
    text = text.strip()
    bold = _LEADING_BOLD.match(text)
    head = bold.group(2) if bold else text
    head = head.replace("*", "").replace("`", "")
    head = _HEAD_END.split(head, maxsplit=1)[0]
    return " ".join(head.strip(_STRIP).split())


def _canonical(text: str) -> str | None:
    """The CRITERIA name an item names, or None."""
    key = " ".join(re.sub(r"[-_]", " ", _head(text)).lower().split())
    return _CANONICAL.get(key)


def _pick_like(text: str) -> bool:
    # A short head reads as a choice ("Creativity", "Note"); a sentence reads as commentary.
    head = _head(text)
    return bool(head) and len(head.split()) <= _PICK_WORDS


def _item(line: str, allow_plain: bool) -> _Item | None:
    m = _ITEM.match(line)
    if m:
        indent = len(m.group("indent").expandtabs(4))
        if m.group("bullet"):
            return _Item(indent, "bullet", None, m.group("text"))
        return _Item(indent, "number", int(m.group("num") or m.group("pnum")), m.group("text"))
    if allow_plain and line.strip() and _canonical(line) is not None:
        return _Item(len(line) - len(line.lstrip()), "plain", None, line.strip())
    return None


def _read_list(lines: list[str], start: int, allow_plain: bool) -> tuple[list[str], int]:
    """Reads the list whose first item is the first non-blank line at or after ``start``.

    Returns:
        The items' texts (empty if that line is not an item) and the index after the list.
    """
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        return [], i
    first = _item(lines[i], allow_plain)
    if first is None:
        return [], i + 1
    # Plain items are only trusted as a whole list, so later lines must be plain too.
    allow_more_plain = first.style == "plain"
    texts, last_number = [first.text], first.number
    i += 1
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())
        if indent >= first.indent + _NEST:
            i += 1  # nested bullet or wrapped text belonging to the previous item
            continue
        item = _item(line, allow_more_plain)
        if item is None or item.style != first.style:
            break
        if item.number is not None and last_number is not None and item.number <= last_number:
            break  # numbering restarts: a new list (typically the explanation)
        texts.append(item.text)
        last_number = item.number
        i += 1
    return texts, i


def _decide(items: list[str]) -> tuple[str, ...] | None:
    if len(items) < 3:
        return None
    picked = [_canonical(t) for t in items[:3]]
    if None in picked or len(set(picked)) != 3:
        return None
    for text in items[3:]:
        name = _canonical(text)
        if name is None and _pick_like(text):
            return None  # a 4th pick that is not a criterion at all
        if name is not None and name not in picked:
            return None  # a 4th criterion: the model chose more than 3
    return tuple(p for p in picked if p is not None)


def parse_criteria(text: str) -> tuple[str, ...] | None:
    """Reads K.2's answer: the 3 selected criteria, as canonical ``CRITERIA`` names.

    See the module docstring for the exact rules.

    Args:
        text: The criteria-filtering model's answer.

    Returns:
        3 distinct criterion names in the order given, or None when the answer does not name
        exactly 3 known criteria (fewer, more, repeated, or made up).
    """
    lines = text.splitlines()
    for n, line in enumerate(lines):
        header = _HEADER.match(line)
        if not header:
            continue
        rest = header.group("rest").strip()
        if rest and not header.group("colon"):
            continue  # prose that happens to start with the words, not a header
        if rest and not re.search(r"[,;]", rest) and _item(rest, False) is not None:
            items, _ = _read_list([rest, *lines[n + 1 :]], 0, allow_plain=False)
        elif rest:
            items = [part for part in _INLINE_SPLIT.split(rest) if part.strip(_STRIP)]
        else:
            items, _ = _read_list(lines, n + 1, allow_plain=True)
        if items:
            return _decide(items)
    i = 0
    while i < len(lines):
        items, end = _read_list(lines, i, allow_plain=False)
        if items and _canonical(items[0]) is not None:
            return _decide(items)
        i = max(end, i + 1)
    return None


# --- verdict -----------------------------------------------------------------------------------

_STRICT = re.compile(r"\[\[([AB])\]\]")
_OTHER = {"A": "B", "B": "A"}
_L = r"(?-i:(?P<w>[AB]))"  # the verdict letter is always a capital; keywords are not
_DECO = r"(?:[*_\"'`(\[]\s*)*"
_VERDICT_WORD = r"\b(?:final\s+)?(?:verdict|decision|judge?ment|answer|choice|winner|preference)"
_NOT = r"(?:(?!not\b|never\b|less\b|no\b)\w+\s+)?"

# Tier 1: the verdict written in some notation of its own.
_TIER1 = [
    # Inside double brackets even a lowercase letter is unambiguous.
    re.compile(r"\[\[\s*(?:assistant\s+|response\s+)?(?P<w>[AB])\s*\]\]", re.I),
    re.compile(r"(?<!\[)\[\s*(?P<w>[AB])\s*\](?!\])"),
    re.compile(
        rf"{_VERDICT_WORD}\s*(?:is\s*)?[:=-]?\s*(?:that\s+)?{_DECO}"
        rf"(?:assistant|response|model)\s+{_DECO}{_L}\b",
        re.I,
    ),
    # A bare letter only right before punctuation or the line's end, so "Verdict: A tie" is
    # not read as A.
    re.compile(
        rf"{_VERDICT_WORD}\s*(?:is\s*)?[:=-]?\s*{_DECO}{_L}[*_\"'`)\]]*(?=\s*(?:[.!,;]|$))",
        re.I | re.M,
    ),
]
# Tier 2: a bold bare letter.
_TIER2 = [re.compile(r"\*\*\s*(?P<w>[AB])\s*\*\*")]
# Tier 3: plain-language comparisons; "worse" patterns point at the other letter.
_BETTER = r"(?:better|superior|stronger|preferred|preferable|the\s+winner)"
_TIER3 = [
    re.compile(
        rf"\b(?:assistant|response)\s+{_L}(?:'s\s+(?:response|answer))?\s+"
        rf"(?:is|was|performs|did|does)\s+{_NOT}(?:the\s+)?{_BETTER}\b",
        re.I,
    ),
    re.compile(rf"\b(?:assistant|response)\s+{_L}\s+(?:wins|outperforms)\b", re.I),
    re.compile(
        rf"\b(?:prefer|favou?r|choose|pick|select|recommend)\s+(?:assistant|response)\s+{_L}\b",
        re.I,
    ),
    re.compile(r"(?<![\w'])(?P<w>[AB])\s+is\s+(?:clearly\s+|slightly\s+|much\s+)?better\b"),
    re.compile(
        r"\b(?:better|superior|stronger|preferred|winning)\s+(?:response|answer|one)\s+is\s+"
        rf"(?:that\s+of\s+)?{_DECO}(?:(?:assistant|response)\s+)?{_L}\b",
        re.I,
    ),
]
_TIER3_WORSE = [
    re.compile(
        rf"\b(?:assistant|response)\s+{_L}\s+(?:is|was|performs)\s+{_NOT}(?:worse|inferior|weaker)\b",
        re.I,
    ),
]
_LAST_LINE_WORDS = {
    "verdict", "final", "answer", "judgment", "judgement", "decision", "conclusion",
    "therefore", "thus", "so", "overall", "winner", "better", "preferred", "choice", "result",
}  # fmt: skip
_LAST_LINE_MAX_WORDS = 10


@dataclass(frozen=True)
class Verdict:
    """A parsed aggregator verdict.

    Attributes:
        winner: ``"A"``, ``"B"``, or None when the text does not indicate exactly one.
        how: ``"strict"`` (only one kind of ``[[A]]``/``[[B]]`` token), ``"lenient"`` (read
            from other wording, or from the last line when both tokens occur), ``"both"``
            (both tokens occur, unresolved), or ``"none"`` (nothing usable).
    """

    winner: str | None
    how: str


def _letters(patterns: list[re.Pattern[str]], text: str) -> set[str]:
    return {m.group("w").upper() for p in patterns for m in p.finditer(text)}


def _final_line_winner(text: str) -> str | None:
    """The winner stated by a closing verdict line like ``Final verdict: [[B]]``, if any."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    kinds = set(_STRICT.findall(last))
    if len(kinds) != 1:
        return None
    winner = kinds.pop()
    rest = _STRICT.sub(" ", last)
    if re.search(rf"\b(?:assistant|response)\s+{_OTHER[winner]}\b", rest, re.I):
        return None  # the line discusses the other answer too: not a plain verdict line
    words = re.findall(r"[a-z]+", rest.lower())
    if not words:
        return winner
    if len(words) <= _LAST_LINE_MAX_WORDS and _LAST_LINE_WORDS.intersection(words):
        return winner
    return None


def _lenient_winner(text: str) -> str | None:
    # Tiers in order of how deliberate the notation is; the first tier with any indication
    # decides, and conflicting indications in it leave the verdict unresolved rather than
    # falling through to weaker evidence.
    tier3 = _letters(_TIER3, text) | {_OTHER[w] for w in _letters(_TIER3_WORSE, text)}
    for letters in (_letters(_TIER1, text), _letters(_TIER2, text), tier3):
        if letters:
            return letters.pop() if len(letters) == 1 else None
    return None


def parse_verdict(text: str) -> Verdict:
    """Reads K.4's answer.

    Rules, in order:

    1. Only one kind of ``[[A]]``/``[[B]]`` occurs (any number of times): that one, "strict".
    2. Both kinds occur: if the last non-empty line holds only one kind and otherwise is empty
       or a short verdict phrase (e.g. ``Final verdict: [[B]]``), that one, "lenient";
       otherwise no winner, "both".
    3. Neither occurs: lenient readings in three tiers -- (1) other verdict notation:
       ``[[a]]``, ``[[ A ]]``, ``[A]``, ``Final verdict: A``, ``Verdict: Assistant B``;
       (2) a bold ``**A**``; (3) wording like ``Assistant A is better``, ``I prefer
       Response B``, ``Assistant B is worse``. The first tier with any indication decides if
       it indicates one letter only ("lenient"); otherwise, or with nothing found, no winner,
       "none".

    Args:
        text: The aggregator's answer.

    Returns:
        The verdict and how it was read.
    """
    kinds = set(_STRICT.findall(text))
    if len(kinds) == 1:
        return Verdict(kinds.pop(), "strict")
    if kinds:
        final = _final_line_winner(text)
        return Verdict(final, "lenient") if final else Verdict(None, "both")
    winner = _lenient_winner(text)
    return Verdict(winner, "lenient") if winner else Verdict(None, "none")
