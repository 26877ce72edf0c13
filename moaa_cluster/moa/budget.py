"""The context budget: every call's prompt plus its answer must fit the model's context.

A call's prompt is the row's own text (system, user turns), the mixture's earlier final
answers carried as history, and for an aggregating layer the previous layer's proposals in
the K.1 system prompt. Only the carried answers can be shortened; the row's own text and the
K.1 template never are.

The rule (``prompt_tokens + max_tokens <= max_model_len``, prompt tokens counted by rendering
the model's chat template):

1. Up front, a row is rejected only if its *floor* prompt does not fit: every carried answer
   (history and proposals) replaced by :data:`MARKER` alone (:meth:`ContextFitter.floor_check`).
2. At run time, with the actual answers, a prompt that does not fit is shortened in this
   order (:func:`plan_cuts`):

   a. the proposals, by water-filling: each gets an equal share of the tokens left after
      everything else; a proposal shorter than its share keeps its full text and its unused
      share goes to the others (a spare token of an uneven split goes to the earlier seat).
      A cut proposal keeps its first ``kept`` tokens (the model's own tokenizer) followed by
      :data:`MARKER`, and the marker's tokens come out of the shared budget;
   b. if the proposals cut to the marker alone still leave no room, the carried history
      answers, oldest first, each down to the marker alone before the next is touched (an
      answer no longer than the marker keeps its text);
   c. if even that cannot make it fit, :class:`ContextOverflow` (the row fails with that
      reason; it is never dropped silently).

   The shortened prompt is rendered and counted again: token counts of pieces do not add up
   exactly across joins, so any excess left is taken off the same way until it fits.

This module is pure: the token counting comes in as callables (a fake counter in unit tests,
the model's tokenizer in the workers, :func:`moaa_cluster.moa.fitters.tokenizer_fitter`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moaa_cluster.moa.prompts import inject_responses

MARKER = "\n[... truncated to fit the context]"
# the floor check skips rendering the chat template only for a row that clears the limit by
# this many tokens per text piece (a piece joined into the template may merge differently
# at its edges); any row closer to the limit is rendered and counted exactly
PIECE_SLACK = 8
MAX_ROUNDS = 8  # recounts after cutting; one is nearly always enough

CountPrompt = Callable[[list[dict]], int]
CountTokens = Callable[[str], int]
Truncate = Callable[[str, int], str]


class ContextOverflow(ValueError):
    """A prompt that cannot fit even with every carried answer cut to the marker."""


def reserved_tokens(max_tokens: int | None) -> int:
    """Tokens a call reserves for its answer.

    Without ``max_tokens`` the engine generates into whatever room is left, so the prompt
    only has to leave one token.
    """
    return int(max_tokens) if max_tokens else 1


@dataclass(frozen=True)
class Cut:
    """One carried answer shortened to fit.

    Attributes:
        what: ``proposal`` (in the K.1 prompt) or ``history`` (an earlier final answer).
        index: For a proposal its seat in the previous layer, for history its turn (both
            0-based, as in the call records).
        tokens: Its length before the cut.
        kept: Tokens of its text kept; :data:`MARKER` follows them.
    """

    what: str
    index: int
    tokens: int
    kept: int

    def as_dict(self) -> dict:
        key = "seat" if self.what == "proposal" else "turn"
        return {"what": self.what, key: self.index, "tokens": self.tokens, "kept": self.kept}


@dataclass(frozen=True)
class Fitted:
    """The messages to send and what was cut to make them fit."""

    messages: list[dict]
    prompt_tokens: int
    budget: int  # the model's max_model_len
    max_tokens: int  # tokens reserved for the answer
    cuts: tuple[Cut, ...] = field(default=())

    def record(self) -> str | None:
        """The call's ``context`` provenance: JSON of the cuts, or None when nothing was cut."""
        if not self.cuts:
            return None
        return json.dumps(
            {
                "cut": [c.as_dict() for c in self.cuts],
                "budget": self.budget,
                "max_tokens": self.max_tokens,
                "prompt_tokens": self.prompt_tokens,
            }
        )


def water_fill(lengths: Sequence[int], budget: int) -> list[int]:
    """Equal shares of ``budget``; an item shorter than its share passes the rest on.

    Items are served shortest first, so each unused share is split among the longer ones;
    the tokens of an uneven split go to the longest, and among equally long items to the
    earliest (a mixture lists its strongest proposer first). Returns each item's allocation
    (never more than its length; the sum never exceeds ``budget``).
    """
    alloc = [0] * len(lengths)
    remaining = max(0, budget)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], -i))
    for pos, i in enumerate(order):
        share = remaining // (len(order) - pos)
        alloc[i] = min(lengths[i], share)
        remaining -= alloc[i]
    return alloc


def water_fill_marked(lengths: Sequence[int], budget: int, marker: int) -> list[int] | None:
    """:func:`water_fill` where every cut item also pays ``marker`` tokens from ``budget``.

    Returns:
        Tokens kept per item (its full length when it is not cut), or None when ``budget``
        cannot even hold the markers of the items that must be cut.
    """
    cut: set[int] = set()
    while True:
        text_budget = budget - marker * len(cut)
        if text_budget < 0:
            return None
        alloc = water_fill(lengths, text_budget)
        now_cut = {i for i, n in enumerate(lengths) if alloc[i] < n}
        if now_cut == cut:  # a smaller budget only cuts more, so this settles
            return alloc
        cut = now_cut


def _floor_keep(length: int, marker: int) -> int:
    """Kept tokens at the floor: the marker alone, unless the text is no longer than it."""
    return length if length <= marker else 0


def plan_cuts(
    proposals: Sequence[int], history: Sequence[int], excess: int, marker: int
) -> tuple[list[int], list[int]] | None:
    """Tokens to keep of each proposal and history answer so ``excess`` tokens come off.

    Proposals are water-filled first; only when the proposals cut to the marker alone are
    not enough are history answers cut, oldest first (``history[0]`` is the oldest).

    Args:
        proposals, history: Token lengths of the carried answers.
        excess: Tokens the prompt is over its limit.
        marker: Token length of :data:`MARKER`.

    Returns:
        ``(kept proposals, kept history)``, each entry the item's full length when it is not
        cut; None when cutting everything to the marker still leaves excess.
    """
    if excess <= 0:
        return list(proposals), list(history)
    kept = water_fill_marked(proposals, sum(proposals) - excess, marker)
    if kept is not None:
        return kept, list(history)
    floor = [_floor_keep(n, marker) for n in proposals]
    freed = sum(n - k - (marker if k < n else 0) for n, k in zip(proposals, floor, strict=True))
    left = excess - freed
    hist = list(history)
    for i, n in enumerate(history):
        if left <= 0:
            break
        room = n - marker  # what cutting this answer to the marker alone frees
        if room <= 0:
            continue
        hist[i] = max(0, room - left)
        left -= room - hist[i]
    return (floor, hist) if left <= 0 else None


class ContextFitter:
    """Fits one model's prompts into its context (the rule in this module's docstring).

    Args:
        max_model_len: The model's context length.
        count_prompt: Prompt tokens of chat messages, as the engine counts them (the chat
            template rendered with the generation prompt).
        count_tokens: Tokens of one text on its own.
        truncate: ``truncate(text, n)``: the text of ``text``'s first ``n`` tokens.
        marker: Appended to every shortened answer.
        name: The model, for error messages.
    """

    def __init__(
        self,
        max_model_len: int,
        count_prompt: CountPrompt,
        count_tokens: CountTokens,
        truncate: Truncate,
        *,
        marker: str = MARKER,
        name: str = "model",
    ):
        self.max_model_len = max_model_len
        self.count_prompt = count_prompt
        self.count_tokens = count_tokens
        self.truncate = truncate
        self.marker = marker
        self.name = name
        self._overheads: dict[tuple, int] = {}
        # the floor check counts a row's earlier turns again for each later turn and layer
        self._own_tokens = functools.lru_cache(maxsize=1024)(count_tokens)

    def __call__(
        self, messages: list[dict], proposals: Sequence[str] | None, max_tokens: int | None
    ) -> Fitted:
        """The messages to send for a call, shortened if they would not fit.

        Args:
            messages: The call's messages without the K.1 prompt: optional system, earlier
                turns (user, assistant), the current user turn.
            proposals: The previous layer's answers for an aggregating layer, else None.
            max_tokens: The call's ``max_tokens``.

        Raises:
            ContextOverflow: Even every carried answer cut to the marker does not fit.
        """
        reserve = reserved_tokens(max_tokens)
        limit = self.max_model_len - reserve
        full = _render(messages, proposals)
        n = self.count_prompt(full)
        if n <= limit:
            return Fitted(full, n, self.max_model_len, reserve)
        hist_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        plen = [self.count_tokens(p) for p in proposals or []]
        hlen = [self.count_tokens(messages[i]["content"]) for i in hist_at]
        marker = self.count_tokens(self.marker)
        excess = n - limit
        for _ in range(MAX_ROUNDS):
            plan = plan_cuts(plen, hlen, excess, marker)
            if plan is None:
                break
            sent, cuts = self._apply(messages, proposals, hist_at, (plen, hlen), plan)
            count = self.count_prompt(sent)
            if count <= limit:
                return Fitted(sent, count, self.max_model_len, reserve, cuts)
            excess += count - limit  # the pieces joined into more tokens than they count alone
        raise ContextOverflow(
            f"prompt too long for {self.name} (max_model_len {self.max_model_len}): {n} prompt "
            f"tokens + {reserve} to generate, and cutting the {len(plen)} proposals and "
            f"{len(hlen)} earlier answers to the truncation marker cannot take off {excess}"
        )

    def _apply(
        self,
        messages: list[dict],
        proposals: Sequence[str] | None,
        hist_at: list[int],
        lengths: tuple[list[int], list[int]],
        plan: tuple[list[int], list[int]],
    ) -> tuple[list[dict], tuple[Cut, ...]]:
        """The rendered messages with ``plan``'s cuts made, and those cuts."""
        cuts = []
        props = list(proposals or [])
        for seat, (text, n, k) in enumerate(zip(props, lengths[0], plan[0], strict=True)):
            if k < n:
                props[seat] = self._cut(text, k)
                cuts.append(Cut("proposal", seat, n, k))
        shorter = [dict(m) for m in messages]
        for turn, (i, n, k) in enumerate(zip(hist_at, lengths[1], plan[1], strict=True)):
            if k < n:
                shorter[i]["content"] = self._cut(messages[i]["content"], k)
                cuts.append(Cut("history", turn, n, k))
        return _render(shorter, None if proposals is None else props), tuple(cuts)

    def _cut(self, text: str, kept: int) -> str:
        return (self.truncate(text, kept) if kept else "") + self.marker

    def floor_check(
        self, messages: list[dict], n_proposals: int | None, max_tokens: int | None
    ) -> int | None:
        """The up-front rule: None when the floor prompt fits, else its token count.

        The floor prompt is ``messages`` with every assistant answer, and each of
        ``n_proposals`` proposals (None: not an aggregating layer), replaced by the marker.
        A cheap upper bound (the template's cost without the row's text, plus each text's
        own count and :data:`PIECE_SLACK`) settles rows far from the limit; the others are
        rendered and counted exactly.
        """
        limit = self.max_model_len - reserved_tokens(max_tokens)
        floor = [
            {**m, "content": self.marker} if m["role"] == "assistant" else dict(m) for m in messages
        ]
        proposals = None if n_proposals is None else [self.marker] * n_proposals
        own = [m["content"] for m in floor if m["role"] != "assistant"]
        key = (tuple(m["role"] for m in floor), n_proposals)
        if key not in self._overheads:
            empty = [m if m["role"] == "assistant" else {**m, "content": ""} for m in floor]
            self._overheads[key] = self.count_prompt(_render(empty, proposals))
        bound = self._overheads[key] + sum(self._own_tokens(t) + PIECE_SLACK for t in own)
        if bound <= limit:
            return None
        n = self.count_prompt(_render(floor, proposals))
        return None if n <= limit else n


def _render(messages: list[dict], proposals: Sequence[str] | None) -> list[dict]:
    if proposals is None:
        return [dict(m) for m in messages]
    return inject_responses(messages, proposals)
