"""Win rates, bootstrap intervals and the length-controlled fit on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from moaa_cluster.evaluation.winrate import (
    bootstrap_ci,
    fit_logistic,
    length_controlled,
    normalized_length_difference,
    scores_of,
    win_rate,
)


def test_counts_and_ties_count_half():
    r = win_rate(["win", "win", "tie", "loss"], resamples=0)
    assert (r.n, r.wins, r.ties, r.losses) == (4, 2, 1, 1)
    assert r.win_rate == pytest.approx(2.5 / 4)
    assert r.ci_low is None and r.ci_high is None and r.lc_win_rate is None


def test_empty_and_bad_outcomes():
    r = win_rate([])
    assert r.n == 0 and r.win_rate is None
    with pytest.raises(ValueError, match="win, tie or loss"):
        scores_of(["win", "unresolved"])


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    outcomes = ["win"] * 30 + ["loss"] * 10 + ["tie"] * 10
    a = win_rate(outcomes, resamples=2000, seed=3)
    b = win_rate(outcomes, resamples=2000, seed=3)
    assert a == b
    assert a.ci_low < a.win_rate < a.ci_high
    # binomial-ish standard error sqrt(p(1-p)/n) ~ 0.06: the 95% interval is about +-0.12
    assert 0.05 < a.win_rate - a.ci_low < 0.2
    assert 0.05 < a.ci_high - a.win_rate < 0.2


def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap_ci([1.0, 1.0, 1.0], resamples=50) == (1.0, 1.0)
    assert bootstrap_ci([], resamples=50) is None
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], confidence=1.5)


def test_logistic_fit_without_predictor_is_the_log_odds_of_the_mean():
    # x constant 0: the slope is penalized to 0 and sigmoid(b0) is the mean score (0.75)
    b0, b1 = fit_logistic([0.0] * 4, [1.0, 1.0, 1.0, 0.0])
    assert b1 == pytest.approx(0.0, abs=1e-9)
    assert b0 == pytest.approx(np.log(3.0), abs=1e-8)


def test_logistic_fit_recovers_known_coefficients():
    # expected targets of a known model are its own maximum-likelihood fit (as l2 -> 0)
    x = np.linspace(-2, 2, 41)
    y = 1 / (1 + np.exp(-(0.5 + 1.5 * x)))
    b0, b1 = fit_logistic(x, y, l2=1e-9)
    assert b0 == pytest.approx(0.5, abs=1e-6)
    assert b1 == pytest.approx(1.5, abs=1e-6)


def test_logistic_fit_stays_finite_on_separated_data():
    b0, b1 = fit_logistic([-1.2, -0.4, 0.4, 1.2], [0, 0, 1, 1], l2=0.1)
    assert b0 == pytest.approx(0.0, abs=1e-8)  # symmetric data: intercept 0
    assert 1.0 < b1 < 10.0
    with pytest.raises(ValueError, match="all 0 or all 1"):
        fit_logistic([0.0, 1.0], [1.0, 1.0])


def test_length_controlled_removes_a_pure_length_effect():
    # The model wins exactly when its answer is the longer one, and it is longer on 3 of 4
    # questions: raw win rate 0.75, but at equal length the fit gives it less credit.
    outcomes = ["loss", "win", "win", "win"]
    r = win_rate(
        outcomes,
        model_lengths=[100, 400, 500, 600],
        baseline_lengths=[300, 300, 300, 300],
        resamples=0,
    )
    assert r.win_rate == pytest.approx(0.75)
    assert 0.0 < r.lc_win_rate < r.win_rate


def test_length_controlled_equals_raw_win_rate_when_lengths_do_not_differ():
    outcomes = ["win", "loss", "tie", "win", "win"]
    r = win_rate(outcomes, model_lengths=[10] * 5, baseline_lengths=[10] * 5, resamples=100)
    assert r.lc_win_rate == pytest.approx(r.win_rate, abs=1e-9)
    assert r.lc_ci_low <= r.lc_win_rate <= r.lc_ci_high


def test_length_controlled_mirror_symmetry_gives_one_half():
    # longer answers win and shorter ones lose, symmetric around zero difference: LC = 0.5
    d = np.array([-50.0, 50.0, -10.0, 10.0])
    x = normalized_length_difference([50, 150, 90, 110], [100, 100, 100, 100])
    assert x.tolist() == pytest.approx((d / d.std()).tolist())
    assert length_controlled(np.array([0.0, 1.0, 0.0, 1.0]), x) == pytest.approx(0.5, abs=1e-9)


def test_length_controlled_of_all_wins_is_one():
    assert length_controlled(np.ones(3), np.array([-1.0, 0.0, 1.0])) == 1.0
    assert length_controlled(np.zeros(3), np.array([-1.0, 0.0, 1.0])) == 0.0
    assert length_controlled(np.full(3, 0.5), np.array([-1.0, 0.0, 1.0])) == pytest.approx(0.5)
