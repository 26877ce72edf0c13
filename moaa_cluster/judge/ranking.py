"""Turning pairwise verdicts into a chosen/rejected pair of candidates.

What the paper prescribes (Sec. 3.2 and 4.1, as recorded in ``PAPER.md``): "Pairwise judging,
each pair twice with the order swapped; all pairs of the 5 (10 comparisons) give the ranking",
and "highest = chosen, lowest = rejected". That is the ``RoundRobin`` plan below.

What the paper leaves open, and this module decides (our rules, not the paper's):

* Combining the two orders (``combine_orders``): a candidate wins a pair only when both orders
  name it; when they disagree the pair is a tie. Why: a judge that says A whoever is A (the
  packaged models do at temperature 0) has shown position bias, not a preference, and
  counting either verdict would rank candidates by where they were shown.
* A pair where either order has no verdict even after recovery is ``unresolved``; it scores
  like a tie so it favours neither side, and it is counted apart, never turned into a win.
* Scores (``scores``): 1 per pair won, 0.5 per tie or unresolved pair (a Copeland-style count;
  the paper does not say how the ranking is computed from the pairs).
* Equal scores (``select_pair``): chosen is the lowest index among the best, rejected the
  highest index among the worst, so the result is deterministic and the tie-breaks pull the
  two apart; when every score is equal there is no pair (no strict preference to learn).
* Eligibility (``select_pair``'s ``eligible``): a candidate the caller marks ineligible (the
  stage-2 pipeline marks candidates cut off at ``max_tokens``) is never chosen but may still
  be rejected; see ``pipeline/prefs.py``.
* ``Knockout``: a cheaper plan of ours that finds only the best and the worst, with about
  3n/2 - 2 comparisons in a few sequential rounds instead of n(n-1)/2.

Plans share one interface, driven by the caller::

    plan = make_plan("round_robin", n)
    while pairs := plan.next_pairs():
        plan.record([judge(i, j) for i, j in pairs])  # the pairs may run concurrently
    chosen_rejected = plan.result()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

TIE = "tie"
UNRESOLVED = "unresolved"


@dataclass(frozen=True)
class PairResult:
    """The outcome of comparing candidates i and j in both orders.

    Attributes:
        i: Index of the candidate shown as A in the first order.
        j: Index of the candidate shown as A in the second order.
        outcome: The winner's index (``i`` or ``j``), ``"tie"`` when the two orders disagree,
            or ``"unresolved"`` when at least one order gave no verdict.
    """

    i: int
    j: int
    outcome: int | str

    def __post_init__(self) -> None:
        if self.i == self.j:
            raise ValueError(f"a candidate is not compared with itself ({self.i})")
        if self.outcome not in (self.i, self.j, TIE, UNRESOLVED):
            raise ValueError(
                f"outcome {self.outcome!r} is not {self.i}, {self.j}, tie or unresolved"
            )

    @property
    def key(self) -> tuple[int, int]:
        """The unordered pair as ``(low, high)``."""
        return (min(self.i, self.j), max(self.i, self.j))


def combine_orders(i: int, j: int, first: str | None, second: str | None) -> PairResult:
    """Combines the two orders' verdicts into one outcome for the pair (our rule).

    The paper judges each pair in both orders but does not say how the two verdicts combine;
    requiring agreement keeps position bias from deciding a pair.

    Args:
        i: One candidate's index.
        j: The other candidate's index.
        first: Verdict of the first order, where A = candidate i and B = candidate j:
            ``"A"``, ``"B"``, or None if unresolved (even after recovery).
        second: Verdict of the second order, where A = candidate j and B = candidate i.

    Returns:
        A ``PairResult`` whose outcome is the winner's index when both orders agree, ``"tie"``
        when they disagree, ``"unresolved"`` when either verdict is None.

    Raises:
        ValueError: If a verdict is not ``"A"``, ``"B"`` or None, or ``i == j``.
    """
    for v in (first, second):
        if v not in ("A", "B", None):
            raise ValueError(f"verdict must be 'A', 'B' or None, got {v!r}")
    if first is None or second is None:
        return PairResult(i, j, UNRESOLVED)
    winner_first = i if first == "A" else j
    winner_second = j if second == "A" else i
    return PairResult(i, j, winner_first if winner_first == winner_second else TIE)


def scores(n: int, results: list[PairResult]) -> list[float]:
    """Tallies pair outcomes: a win counts 1, a tie or unresolved pair 0.5 to each side.

    Unresolved comparisons are scored like ties so they favour neither candidate; the caller
    counts them separately, and they are never turned into a win.

    Args:
        n: Number of candidates.
        results: Outcomes of the comparisons made.

    Returns:
        One score per candidate.

    Raises:
        ValueError: If a result refers to a candidate outside ``range(n)``.
    """
    total = [0.0] * n
    for r in results:
        if not (0 <= r.i < n and 0 <= r.j < n):
            raise ValueError(f"pair ({r.i}, {r.j}) is outside {n} candidates")
        if isinstance(r.outcome, int):
            total[r.outcome] += 1.0
        else:
            total[r.i] += 0.5
            total[r.j] += 0.5
    return total


def select_pair(
    scores: list[float], eligible: Sequence[bool] | None = None
) -> tuple[int, int] | None:
    """Picks (chosen, rejected) from scores (our tie rules; see the module docstring).

    Chosen is the highest score among the eligible candidates (ties: lowest index), rejected
    the lowest score among all candidates (ties: highest index). Chosen must score strictly
    above rejected.

    Args:
        scores: One score per candidate.
        eligible: Per candidate, whether it may be chosen; None: every candidate may.

    Returns:
        ``(chosen, rejected)``, or None when no eligible candidate scores above the worst:
        all scores equal (includes fewer than 2 candidates), no eligible candidate, or only
        ineligible candidates above the worst.

    Raises:
        ValueError: If ``eligible`` does not have one flag per candidate.
    """
    if eligible is None:
        eligible = [True] * len(scores)
    if len(eligible) != len(scores):
        raise ValueError(f"{len(eligible)} eligibility flags for {len(scores)} candidates")
    allowed = [k for k, ok in enumerate(eligible) if ok]
    if len(scores) < 2 or not allowed:
        return None
    best, worst = max(scores[k] for k in allowed), min(scores)
    if best <= worst:
        return None
    chosen = min(k for k in allowed if scores[k] == best)
    rejected = max(k for k, s in enumerate(scores) if s == worst)
    return chosen, rejected


class ComparisonPlan(Protocol):
    """What the ranking loop needs from a plan."""

    n: int

    def next_pairs(self) -> list[tuple[int, int]]: ...
    def record(self, results: list[PairResult]) -> None: ...
    def result(self, eligible: Sequence[bool] | None = None) -> tuple[int, int] | None: ...
    def scores(self) -> list[float]: ...
    @property
    def done(self) -> bool: ...
    @property
    def total_comparisons(self) -> int: ...


class _Plan:
    """Bookkeeping shared by the plans: the pairs issued and the outcomes recorded."""

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"number of candidates must be >= 0, got {n}")
        self.n = n
        self._pending: dict[tuple[int, int], tuple[int, int]] = {}  # key -> pair as issued
        self._results: list[PairResult] = []

    def _issue(self, pairs: list[tuple[int, int]]) -> None:
        for i, j in pairs:
            self._pending[(min(i, j), max(i, j))] = (i, j)

    def next_pairs(self) -> list[tuple[int, int]]:
        """The comparisons to run now, concurrently; an empty list once the plan is done.

        Calling it again before ``record`` returns the same outstanding pairs.
        """
        return list(self._pending.values())

    def record(self, results: list[PairResult]) -> None:
        """Records outcomes of outstanding pairs (all or some); advances when a round is full.

        Raises:
            ValueError: If a result is for a pair that is not outstanding.
        """
        for r in results:
            if r.key not in self._pending:
                raise ValueError(f"pair ({r.i}, {r.j}) was not asked for or is already recorded")
            del self._pending[r.key]
            self._results.append(r)
            self._on_result(r)
        if not self._pending:
            self._advance()

    def _on_result(self, result: PairResult) -> None:
        pass

    def _advance(self) -> None:
        pass

    @property
    def done(self) -> bool:
        """True once no comparisons are outstanding or left to issue."""
        return not self._pending

    @property
    def total_comparisons(self) -> int:
        """Comparisons (pairs, each judged in both orders) recorded so far; final once done."""
        return len(self._results)

    @property
    def results(self) -> list[PairResult]:
        """Every recorded outcome, in recording order."""
        return list(self._results)

    def scores(self) -> list[float]:
        """``scores`` over the comparisons recorded so far."""
        return scores(self.n, self._results)

    def _check_done(self) -> None:
        if not self.done:
            raise RuntimeError("the plan still has comparisons to run; call next_pairs()")


class RoundRobin(_Plan):
    """The paper's plan: every pair (in both orders), then the best and the worst scores."""

    def __init__(self, n: int):
        super().__init__(n)
        self._issue([(i, j) for i in range(n) for j in range(i + 1, n)])

    def result(self, eligible: Sequence[bool] | None = None) -> tuple[int, int] | None:
        """``select_pair`` over the final scores.

        Args:
            eligible: Per candidate, whether it may be chosen; None: every candidate may.

        Raises:
            RuntimeError: If comparisons are still outstanding.
        """
        self._check_done()
        return select_pair(self.scores(), eligible)


class Knockout(_Plan):
    """Finds the best and the worst candidate with about 3n/2 - 2 comparisons.

    Round 1 pairs candidates (0, 1), (2, 3), ...; each pair's winner enters the winners
    bracket and its loser the losers bracket (with odd n the last candidate enters both).
    Then each bracket is a single-elimination tournament, the two running side by side:
    winners advance in the winners bracket, losers in the losers bracket, until one candidate
    is left in each. Members are paired in order and an odd one out gets a bye to the next
    round. n = 5 takes 6 comparisons in 3 rounds (round robin: 10 in 1).

    A tie or unresolved comparison is broken the same way ``select_pair`` breaks equal
    scores: the lower index counts as the winner (it advances in the winners bracket and
    goes to the winners bracket in round 1), the higher index as the loser.

    ``scores()`` tallies only the comparisons this plan ran, so it is a record, not the basis
    of the choice (candidates take part in different numbers of comparisons).
    """

    def __init__(self, n: int):
        super().__init__(n)
        # Bracket round being played: the pair key -> "split" (round 1), "best" or "worst".
        self._roles: dict[tuple[int, int], str] = {}
        self._outcomes: dict[tuple[int, int], PairResult] = {}
        self._winners: list[int] = []
        self._losers: list[int] = []
        self._byes: tuple[list[int], list[int]] = ([], [])
        pairs = [(k, k + 1) for k in range(0, n - 1, 2)]
        if n % 2:
            # The odd one out belongs to both brackets; with n == 1 it is the whole field.
            self._byes = ([n - 1], [n - 1])
        if pairs:
            self._start_round({p: "split" for p in pairs})
        else:
            self._winners, self._losers = list(range(n)), list(range(n))

    def _start_round(self, roles: dict[tuple[int, int], str]) -> None:
        self._roles = roles
        self._outcomes = {}
        self._issue(list(roles))

    def _on_result(self, result: PairResult) -> None:
        self._outcomes[result.key] = result

    @staticmethod
    def _split(result: PairResult) -> tuple[int, int]:
        """(winner, loser) of a comparison, ties and unresolved going to the lower index."""
        low, high = result.key
        if isinstance(result.outcome, int):
            return result.outcome, high if result.outcome == low else low
        return low, high

    def _advance(self) -> None:
        winners: list[int] = []
        losers: list[int] = []
        for key, role in self._roles.items():
            winner, loser = self._split(self._outcomes[key])
            if role in ("split", "best"):
                winners.append(winner)
            if role in ("split", "worst"):
                losers.append(loser)
        # Byes go last so a bye never repeats while others still play.
        winners += self._byes[0]
        losers += self._byes[1]
        self._winners, self._losers = winners, losers
        roles: dict[tuple[int, int], str] = {}
        byes: tuple[list[int], list[int]] = ([], [])
        for members, role, bye in ((winners, "best", byes[0]), (losers, "worst", byes[1])):
            for k in range(0, len(members) - 1, 2):
                roles[(members[k], members[k + 1])] = role
            if len(members) % 2:
                bye.append(members[-1])
        self._byes = byes
        if roles:
            # The brackets share at most one candidate (the round-1 bye), so the same pair
            # never comes up twice in one round.
            self._start_round({(min(p), max(p)): r for p, r in roles.items()})
        else:
            self._roles = {}

    def result(self, eligible: Sequence[bool] | None = None) -> tuple[int, int] | None:
        """(winners-bracket champion, losers-bracket champion).

        Args:
            eligible: Per candidate, whether it may be chosen; None: every candidate may.
                The brackets are not replayed without the ineligible ones: the plan knows
                only the champion is best, not who comes second.

        Returns:
            The pair, or None with fewer than 2 candidates, when no comparison had a winner
            (every decision came from tie-breaking alone), when the two brackets end on the
            same candidate (possible with odd n and inconsistent verdicts), or when the
            winners-bracket champion is not eligible.

        Raises:
            RuntimeError: If comparisons are still outstanding.
            ValueError: If ``eligible`` does not have one flag per candidate.
        """
        self._check_done()
        if eligible is not None and len(eligible) != self.n:
            raise ValueError(f"{len(eligible)} eligibility flags for {self.n} candidates")
        if self.n < 2 or not any(isinstance(r.outcome, int) for r in self._results):
            return None
        chosen, rejected = self._winners[0], self._losers[0]
        if chosen == rejected or (eligible is not None and not eligible[chosen]):
            return None
        return chosen, rejected


PLANS: dict[str, type[RoundRobin] | type[Knockout]] = {
    "round_robin": RoundRobin,
    "knockout": Knockout,
}


def make_plan(name: str, n: int) -> RoundRobin | Knockout:
    """Creates a comparison plan by name.

    Args:
        name: ``"round_robin"`` (the paper's) or ``"knockout"``.
        n: Number of candidates.

    Returns:
        A fresh plan.

    Raises:
        ValueError: If ``name`` is not a known plan.
    """
    try:
        return PLANS[name](n)
    except KeyError:
        raise ValueError(
            f"unknown comparison plan {name!r}; expected one of {list(PLANS)}"
        ) from None
