"""Both-orders combination, scores, pair selection and the comparison plans."""

from __future__ import annotations

import itertools
import random

import pytest

from moaa_cluster.judge.ranking import (
    TIE,
    UNRESOLVED,
    Knockout,
    PairResult,
    RoundRobin,
    combine_orders,
    make_plan,
    scores,
    select_pair,
)

# --- combine_orders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ("A", "B", 3),  # i wins as A, and as B in the swapped order
        ("B", "A", 7),  # j wins in both orders
        ("A", "A", TIE),  # position bias: A wins whoever is A
        ("B", "B", TIE),
        (None, "B", UNRESOLVED),
        ("A", None, UNRESOLVED),
        (None, None, UNRESOLVED),
    ],
)
def test_combine_orders(first, second, outcome):
    assert combine_orders(3, 7, first, second) == PairResult(3, 7, outcome)


def test_combine_orders_rejects_bad_verdict():
    with pytest.raises(ValueError):
        combine_orders(0, 1, "C", "A")
    with pytest.raises(ValueError):
        combine_orders(0, 0, "A", "B")


def test_pair_result_validates_and_stringifies():
    with pytest.raises(ValueError):
        PairResult(0, 1, 2)
    with pytest.raises(ValueError):
        PairResult(0, 1, "draw")
    assert [str(PairResult(0, 1, o).outcome) for o in (0, 1, TIE, UNRESOLVED)] == [
        "0",
        "1",
        "tie",
        "unresolved",
    ]
    assert PairResult(4, 2, TIE).key == (2, 4)


# --- scores and select_pair --------------------------------------------------------------------


def test_scores():
    results = [PairResult(0, 1, 0), PairResult(0, 2, TIE), PairResult(1, 2, UNRESOLVED)]
    assert scores(3, results) == [1.5, 0.5, 1.0]
    assert scores(2, []) == [0.0, 0.0]
    with pytest.raises(ValueError):
        scores(2, [PairResult(0, 2, 0)])


def test_select_pair_tie_breaks():
    assert select_pair([1.0, 3.0, 0.0, 2.0]) == (1, 2)
    # chosen: lowest index among the best; rejected: highest index among the worst
    assert select_pair([2.0, 2.0, 1.0, 1.0]) == (0, 3)
    assert select_pair([2.0, 1.0, 2.0, 1.0, 1.5]) == (0, 3)


@pytest.mark.parametrize("values", [[], [1.0], [0.5, 0.5], [2.0, 2.0, 2.0, 2.0, 2.0]])
def test_select_pair_none_without_strict_preference(values):
    assert select_pair(values) is None


@pytest.mark.parametrize(
    ("values", "eligible", "expected"),
    [
        ([1.0, 3.0, 0.0, 2.0], [True] * 4, (1, 2)),  # all eligible: as without flags
        ([1.0, 3.0, 0.0, 2.0], [True, False, True, True], (3, 2)),  # best cut off: next best
        ([1.0, 3.0, 0.0, 2.0], [True, True, False, True], (1, 2)),  # cut off, still rejected
        ([3.0, 3.0, 0.0, 2.0], [False, True, True, True], (1, 2)),  # tie-break among eligible
        ([1.0, 3.0, 1.0], [True, False, True], None),  # only an ineligible one above the worst
        ([1.0, 3.0, 0.0], [False, False, False], None),  # nothing may be chosen
    ],
)
def test_select_pair_never_chooses_an_ineligible_candidate(values, eligible, expected):
    assert select_pair(values, eligible) == expected


def test_select_pair_eligibility_needs_one_flag_per_candidate():
    with pytest.raises(ValueError, match="2 eligibility flags for 3 candidates"):
        select_pair([1.0, 2.0, 3.0], [True, True])


# --- plans ---------------------------------------------------------------------------------------


def truth_comparator(quality):
    """A judge that always agrees with a hidden ranking (higher quality wins)."""

    def judge(i: int, j: int) -> PairResult:
        return combine_orders(
            i, j, "A" if quality[i] > quality[j] else "B", "B" if quality[i] > quality[j] else "A"
        )

    return judge


def drive(plan, judge):
    rounds = 0
    while pairs := plan.next_pairs():
        rounds += 1
        assert len(set(pairs)) == len(pairs)
        plan.record([judge(i, j) for i, j in pairs])
    assert plan.done and plan.next_pairs() == []
    return rounds


def test_round_robin_all_pairs_in_one_batch():
    plan = RoundRobin(5)
    pairs = plan.next_pairs()
    assert len(pairs) == 10
    assert {frozenset(p) for p in pairs} == {
        frozenset(p) for p in itertools.combinations(range(5), 2)
    }
    assert plan.next_pairs() == pairs  # asking again before recording repeats, not extends
    assert drive(plan, truth_comparator([5, 1, 3, 9, 0])) == 1
    assert plan.total_comparisons == 10
    assert plan.result() == (3, 4)
    assert plan.scores() == [3.0, 1.0, 2.0, 4.0, 0.0]


def test_round_robin_partial_recording():
    plan = RoundRobin(3)
    judge = truth_comparator([0, 1, 2])
    first, *rest = plan.next_pairs()
    plan.record([judge(*first)])
    assert not plan.done
    with pytest.raises(RuntimeError):
        plan.result()
    assert plan.next_pairs() == rest
    plan.record([judge(*p) for p in rest])
    assert plan.result() == (2, 0)


def test_record_rejects_unknown_or_repeated_pairs():
    plan = RoundRobin(3)
    with pytest.raises(ValueError):
        plan.record([PairResult(0, 5, 0)])
    plan.record([PairResult(1, 0, 1)])  # either orientation of an outstanding pair
    with pytest.raises(ValueError):
        plan.record([PairResult(0, 1, 0)])


@pytest.mark.parametrize("name", ["round_robin", "knockout"])
def test_degenerate_sizes(name):
    for n in (0, 1):
        plan = make_plan(name, n)
        assert plan.next_pairs() == []
        assert plan.done and plan.total_comparisons == 0
        assert plan.result() is None
    plan = make_plan(name, 2)
    assert plan.next_pairs() == [(0, 1)]
    drive(plan, truth_comparator([1, 2]))
    assert plan.result() == (1, 0)
    assert plan.total_comparisons == 1


def test_make_plan():
    assert isinstance(make_plan("round_robin", 5), RoundRobin)
    assert isinstance(make_plan("knockout", 5), Knockout)
    with pytest.raises(ValueError):
        make_plan("swiss", 5)


def test_knockout_agrees_with_round_robin_on_every_order_of_5():
    for quality in itertools.permutations(range(5)):
        rr, ko = RoundRobin(5), Knockout(5)
        drive(rr, truth_comparator(quality))
        rounds = drive(ko, truth_comparator(quality))
        best, worst = quality.index(4), quality.index(0)
        assert rr.result() == ko.result() == (best, worst)
        assert ko.total_comparisons == 6 < rr.total_comparisons == 10
        assert rounds == 3


@pytest.mark.parametrize("n", [2, 3, 4, 6, 7, 8])
def test_knockout_finds_extremes_for_other_sizes(n):
    rng = random.Random(n)
    for _ in range(50):
        quality = rng.sample(range(100), n)
        plan = Knockout(n)
        drive(plan, truth_comparator(quality))
        assert plan.result() == (quality.index(max(quality)), quality.index(min(quality)))
        assert plan.total_comparisons == n // 2 + 2 * ((n + 1) // 2 - 1)


def test_knockout_never_repeats_a_pair():
    plan = Knockout(7)
    seen = set()
    judge = truth_comparator([3, 6, 0, 2, 5, 1, 4])
    while pairs := plan.next_pairs():
        for p in pairs:
            assert frozenset(p) not in seen
            seen.add(frozenset(p))
        plan.record([judge(i, j) for i, j in pairs])


def test_knockout_tie_breaks():
    # Round 1: (0,1) and (2,3) tie, so the lower indices 0 and 2 enter the winners bracket
    # and 1 and 3 the losers bracket; 4 has a bye into both. Round 2: (0,2) ties, 0 advances;
    # 3 beats 1, so 1 sinks on in the losers bracket. Round 3: 4 beats 0 for the top, and
    # (1,4) is unresolved, so the higher index, 4, counts as the loser at the bottom. 4 then
    # ends both brackets: an inconsistent outcome, reported as no pair.
    outcomes = {(0, 1): TIE, (2, 3): TIE, (0, 2): TIE, (1, 3): 3, (0, 4): 4, (1, 4): UNRESOLVED}
    plan = Knockout(5)
    asked = []
    while pairs := plan.next_pairs():
        asked.append(sorted(pairs))
        plan.record([PairResult(i, j, outcomes[(i, j)]) for i, j in pairs])
    assert asked == [[(0, 1), (2, 3)], [(0, 2), (1, 3)], [(0, 4), (1, 4)]]
    assert plan.result() is None

    outcomes[(1, 4)] = 4  # 4 beats 1 at the bottom: 1 is the worst
    plan = Knockout(5)
    drive(plan, lambda i, j: PairResult(i, j, outcomes[(i, j)]))
    assert plan.result() == (4, 1)
    assert plan.scores() == [1.0, 0.5, 1.0, 1.5, 2.0]


def test_knockout_all_ties_is_no_preference():
    plan = Knockout(5)
    drive(plan, lambda i, j: PairResult(i, j, TIE))
    assert plan.result() is None
    rr = RoundRobin(5)
    drive(rr, lambda i, j: PairResult(i, j, TIE))
    assert rr.result() is None


def noisy_comparator(quality, seed, flip=0.3):
    """Sometimes the two orders disagree (a tie) or a verdict is missing (unresolved)."""
    rng = random.Random(seed)

    def judge(i: int, j: int) -> PairResult:
        truth_first = "A" if quality[i] > quality[j] else "B"
        truth_second = "B" if truth_first == "A" else "A"
        first = truth_first if rng.random() > flip else rng.choice(["A", "B", None])
        second = truth_second if rng.random() > flip else rng.choice(["A", "B", None])
        return combine_orders(i, j, first, second)

    return judge


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("name", ["round_robin", "knockout"])
def test_noisy_comparator_is_deterministic_and_valid(name, seed):
    quality = random.Random(seed).sample(range(5), 5)

    def run():
        plan = make_plan(name, 5)
        drive(plan, noisy_comparator(quality, seed))
        return plan.result(), plan.scores(), plan.total_comparisons

    first, again = run(), run()
    assert first == again
    result, tally, total = first
    # Every comparison hands out exactly one point, whatever its outcome.
    assert sum(tally) == total
    if result is not None:
        chosen, rejected = result
        assert chosen != rejected and 0 <= chosen < 5 and 0 <= rejected < 5
    if name == "round_robin":
        assert total == 10 and result == select_pair(tally)


def test_noisy_comparator_produces_ties():
    quality = [0, 1, 2, 3, 4]
    judge = noisy_comparator(quality, seed=1, flip=0.5)
    outcomes = [
        judge(i, j).outcome for i, j in itertools.combinations(range(5), 2) for _ in range(5)
    ]
    assert TIE in outcomes and UNRESOLVED in outcomes


def test_plans_never_choose_an_ineligible_candidate():
    quality = [2, 4, 0, 3, 1]  # candidate 1 is best, 2 worst
    rr, ko = RoundRobin(5), Knockout(5)
    drive(rr, truth_comparator(quality))
    drive(ko, truth_comparator(quality))
    cut = [True, False, True, True, True]  # the best is cut off
    assert rr.result() == ko.result() == (1, 2)
    assert rr.result(cut) == (3, 2)  # the next best by score
    assert ko.result(cut) is None  # the brackets know only the champion: no runner-up
    worst_cut = [True, True, False, True, True]
    assert rr.result(worst_cut) == ko.result(worst_cut) == (1, 2)  # may still be rejected
    with pytest.raises(ValueError):
        ko.result([True])
