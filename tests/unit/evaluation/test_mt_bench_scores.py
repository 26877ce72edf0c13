"""MT-Bench aggregates on hand-computed grades, unparsed grades and invalid rows."""

from __future__ import annotations

import pytest

from moaa_cluster.evaluation.mt_bench_scores import TurnScore, mt_bench_scores

ROWS = [
    (81, "writing", 1, 8),
    (81, "writing", 2, 6.0),
    (82, "writing", 1, 9),
    (82, "writing", 2, None),
    (111, "math", 1, 3),
    (111, "math", 2, 5),
    (112, "math", 1, None),
    (112, "math", 2, None),
    (91, "roleplay", 1, None),
    (91, "roleplay", 2, None),
]


def test_means_per_turn_category_and_overall_by_hand():
    r = mt_bench_scores(ROWS)
    assert r.turn_1 == pytest.approx((8 + 9 + 3) / 3)
    assert r.turn_2 == pytest.approx((6 + 5) / 2)
    # pooled over the 5 parsed grades, not the mean of the two turn means (6.083...)
    assert r.overall == pytest.approx(31 / 5)
    assert r.per_category == pytest.approx({"writing": 23 / 3, "math": 4.0})
    assert (r.scored, r.unparsed) == (5, 5)
    assert r.turn_counts == {1: 3, 2: 2}
    assert r.category_counts == {"math": 2, "roleplay": 0, "writing": 3}
    assert r.ci_low is None and r.ci_high is None and r.resamples == 0


def test_unparsed_grades_are_counted_not_averaged():
    # dropping the unparsed rows changes no mean, only the counts
    parsed_only = mt_bench_scores([row for row in ROWS if row[3] is not None])
    with_unparsed = mt_bench_scores(ROWS)
    assert with_unparsed.overall == parsed_only.overall
    assert with_unparsed.unparsed == 5 and parsed_only.unparsed == 0
    assert "roleplay" not in with_unparsed.per_category
    nothing = mt_bench_scores([(1, "coding", 1, None), (1, "coding", 2, None)], resamples=50)
    assert (nothing.overall, nothing.turn_1, nothing.ci_low) == (None, None, None)
    assert (nothing.scored, nothing.unparsed) == (0, 2)


def test_bounds_are_valid_and_accepts_named_rows():
    r = mt_bench_scores([TurnScore("q", "stem", 1, 1), TurnScore("q", "stem", 2, 10)])
    assert (r.overall, r.turn_1, r.turn_2) == (5.5, 1.0, 10.0)
    assert r.as_dict()["per_category"] == {"stem": 5.5}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ((1, "math", 1, 0), r"\[1, 10\]"),
        ((1, "math", 1, 11), r"\[1, 10\]"),
        ((1, "math", 1, 10.5), r"\[1, 10\]"),
        ((1, "math", 1, -1), r"\[1, 10\]"),  # FastChat's "unparsed" marker: pass None instead
        ((1, "math", 1, float("nan")), r"\[1, 10\]"),
        ((1, "math", 1, "7"), "number or None"),
        ((1, "math", 1, True), "number or None"),
        ((1, "math", 3, 5), "turn must be 1 or 2"),
        ((1, "math", 1), "rows are"),
    ],
)
def test_invalid_rows_raise(row, match):
    with pytest.raises(ValueError, match=match):
        mt_bench_scores([row])


def test_repeated_turns_and_conflicting_categories_raise():
    with pytest.raises(ValueError, match="appears twice"):
        mt_bench_scores([(1, "math", 1, 5), (1, "math", 1, 6)])
    with pytest.raises(ValueError, match="two categories"):
        mt_bench_scores([(1, "math", 1, 5), (1, "coding", 2, 6)])


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    rows = [(q, "c", t, float(1 + (q * 7 + t * 3) % 10)) for q in range(40) for t in (1, 2)]
    a = mt_bench_scores(rows, resamples=500, seed=5)
    b = mt_bench_scores(rows, resamples=500, seed=5)
    c = mt_bench_scores(rows, resamples=500, seed=6)
    assert a == b and a.ci_low != c.ci_low
    assert a.ci_low < a.overall < a.ci_high
    assert 0.3 < a.ci_high - a.ci_low < 3.0


def test_bootstrap_resamples_questions_with_both_turns():
    # every question's two grades average 5.5: resampled questions cannot move the mean,
    # resampled single turns would
    rows = [(q, "c", t, 1.0 if t == 1 else 10.0) for q in range(30) for t in (1, 2)]
    r = mt_bench_scores(rows, resamples=200, seed=0)
    assert (r.ci_low, r.overall, r.ci_high) == pytest.approx((5.5, 5.5, 5.5))
