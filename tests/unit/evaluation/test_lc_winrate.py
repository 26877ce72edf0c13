"""AlpacaEval 2 length-controlled win rates against direct fits and planted length effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moaa_cluster.evaluation.lc_winrate import (
    JudgedAnswers,
    fit_instruction_difficulty,
    fit_length_glm,
    lc_win_rate,
    lc_win_rates,
    length_term,
)


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, dtype=float)))


def test_plain_win_rate_is_the_mean_preference_in_percent():
    r = lc_win_rate([1.0, 0.5, 0.0, 1.0], [10, 20, 30, 40], [20, 20, 20, 20], resamples=0)
    assert r.win_rate == pytest.approx(62.5)
    assert (r.n, r.variant, r.resamples) == (4, "minimal", 0)
    assert r.ci_low is None and r.lc_ci_high is None


def test_length_term_by_hand_and_weights_repeat_instructions():
    # d = (-1, 1): sample sd (ddof 1) is sqrt(2)
    assert length_term([9, 11], [10, 10]) == pytest.approx(np.tanh([-1 / 2**0.5, 1 / 2**0.5]))
    assert length_term([5, 5, 5], [1, 2, 3]).tolist() != [0.0, 0.0, 0.0]
    assert length_term([5, 5], [5, 5]).tolist() == [0.0, 0.0]
    model, ref = np.array([3.0, 10.0, 4.0, 8.0]), np.array([5.0, 5.0, 5.0, 5.0])
    weighted = length_term(model, ref, np.array([2.0, 1.0, 0.0, 3.0]))
    repeated = length_term(np.repeat(model, [2, 1, 0, 3]), np.repeat(ref, [2, 1, 0, 3]))
    assert weighted[[0, 1, 3]] == pytest.approx(repeated[[0, 2, 3]])


def test_glm_recovers_the_coefficients_that_generated_soft_preferences():
    t = np.linspace(-0.9, 0.9, 61)
    gamma = np.cos(7 * t)
    p = _sigmoid(0.3 + 1.2 * t - 0.8 * gamma)
    theta, phi, psi = fit_length_glm(p, t, gamma, l2=1e-9)
    assert (theta, phi, psi) == pytest.approx((0.3, 1.2, -0.8), abs=1e-5)


def test_glm_matches_a_direct_minimization_of_the_penalized_objective():
    minimize = pytest.importorskip("scipy.optimize").minimize
    rng = np.random.default_rng(5)
    n = 50
    p = rng.uniform(0, 1, n)
    p[:5] = [0.0, 1.0, 1.0, 0.5, 0.0]
    t = np.tanh(rng.normal(size=n))
    gamma = rng.normal(size=n)
    w = rng.integers(0, 3, n).astype(float)
    l2 = 0.7

    def loss(b):
        z = b[0] + b[1] * t + b[2] * gamma
        value = -np.sum(w * (p * z - np.logaddexp(0, z))) + l2 / 2 * (b[1] ** 2 + b[2] ** 2)
        r = w * (_sigmoid(z) - p)
        grad = np.array([r.sum(), r @ t + l2 * b[1], r @ gamma + l2 * b[2]])
        return value, grad

    direct = minimize(loss, np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    assert fit_length_glm(p, t, gamma, weights=w, l2=l2) == pytest.approx(direct, abs=1e-6)


def test_difficulty_fit_matches_a_direct_minimization_of_the_joint_objective():
    minimize = pytest.importorskip("scipy.optimize").minimize
    rng = np.random.default_rng(9)
    m, n = 3, 25
    p = rng.uniform(0, 1, (m, n))
    p[:, 0] = 1.0  # an instruction every model wins: only the penalty keeps gamma finite
    t = np.tanh(rng.normal(size=(m, n)))
    w = rng.integers(1, 4, n).astype(float)
    l2, dl2 = 0.1, 0.25

    def loss(x):
        theta, phi, gamma = x[:m, None], x[m : 2 * m, None], x[None, 2 * m :]
        z = theta + phi * t + gamma
        penalty = l2 / 2 * np.sum(x[: 2 * m] ** 2) + dl2 / 2 * np.sum(x[2 * m :] ** 2)
        r = w * (_sigmoid(z) - p)
        grad = np.concatenate([r.sum(1), (r * t).sum(1), r.sum(0)])
        grad += np.concatenate([np.full(2 * m, l2), np.full(n, dl2)]) * x
        return -np.sum(w * (p * z - np.logaddexp(0, z))) + penalty, grad

    x = minimize(loss, np.zeros(2 * m + n), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    direct = x[2 * m :] - np.sum(w * x[2 * m :]) / w.sum()
    fitted = fit_instruction_difficulty(p, t, weights=w, l2=l2, difficulty_l2=dl2)
    assert fitted == pytest.approx(direct, abs=1e-5)
    assert np.sum(w * fitted) == pytest.approx(0.0, abs=1e-9)
    assert fitted[0] == max(fitted)  # the instruction everyone wins is the easiest


def _three_models(lengths_of_a):
    """Models answering 300 instructions whose difficulty drives the preference."""
    rng = np.random.default_rng(4)
    n = 300
    ref = np.full(n, 800.0)
    difficulty = rng.normal(0, 1.5, n)
    models = {}
    for name, theta in (("A", 0.5), ("B", -0.3), ("C", 0.0)):
        lengths = lengths_of_a(difficulty, ref) if name == "A" else ref + rng.normal(0, 100, n)
        models[name] = JudgedAnswers(_sigmoid(theta + difficulty), lengths)
    return models, ref


def test_without_length_differences_lc_equals_the_plain_win_rate():
    # the free theta makes the fitted preferences average to mean(p): equal to ~1e-9 points
    models, ref = _three_models(lambda d, ref: ref)
    models = {name: JudgedAnswers(m.preferences, ref.copy()) for name, m in models.items()}
    for variant in ("v1", "minimal"):
        for r in lc_win_rates(models, ref, variant=variant, resamples=0).values():
            assert r.variant == variant
            assert r.lc_win_rate == pytest.approx(r.win_rate, abs=1e-7)
            assert r.coefficients["phi"] == pytest.approx(0.0, abs=1e-9)


def test_a_preference_driven_by_length_only_controls_to_about_half():
    rng = np.random.default_rng(2)
    n = 400
    ref = np.full(n, 500.0)
    model = ref + rng.uniform(-100, 300, n)  # mostly longer than the reference
    p = _sigmoid(1.5 * length_term(model, ref))
    r = lc_win_rate(p, model, ref, resamples=0)
    assert r.win_rate > 60
    assert r.lc_win_rate == pytest.approx(50.0, abs=0.5)
    assert r.coefficients["theta"] == pytest.approx(0.0, abs=0.02)
    assert r.coefficients["phi"] == pytest.approx(1.5, abs=0.05)


def test_v1_separates_instruction_difficulty_from_length():
    # A writes longer answers exactly where the instructions are easy; the judge ignores
    # length. The minimal GLM mistakes the easy instructions for a length effect, v1 sees
    # from B and C that those instructions are easy for everyone.
    models, ref = _three_models(lambda d, ref: ref + 200 * np.maximum(d, 0))
    v1 = lc_win_rates(models, ref, variant="v1", resamples=0)
    minimal = lc_win_rates(models, ref, variant="minimal", resamples=0)
    a_true = v1["A"].win_rate  # no length effect: the controlled rate is the plain one
    assert v1["A"].variant == "v1" and minimal["A"].variant == "minimal"
    assert abs(v1["A"].lc_win_rate - a_true) < 1.5
    assert minimal["A"].lc_win_rate < a_true - 10
    assert minimal["A"].coefficients["psi"] == 0.0 and v1["A"].coefficients["psi"] > 0.5
    for name in ("B", "C"):  # lengths unrelated to the preference: little to correct
        assert abs(v1[name].lc_win_rate - v1[name].win_rate) < 1.0


def test_v1_with_one_model_falls_back_to_minimal():
    models, ref = _three_models(lambda d, ref: ref + 200 * np.maximum(d, 0))
    only = {"A": models["A"]}
    r = lc_win_rates(only, ref, variant="v1", resamples=0)["A"]
    single = lc_win_rate(models["A"].preferences, models["A"].lengths, ref, resamples=0)
    assert r.variant == "minimal"
    assert r.lc_win_rate == pytest.approx(single.lc_win_rate, abs=1e-12)


def test_bootstrap_interval_follows_the_seed_and_brackets_the_estimates():
    models, ref = _three_models(lambda d, ref: ref + 200 * np.maximum(d, 0))
    a = lc_win_rates(models, ref, resamples=60, seed=3)
    b = lc_win_rates(models, ref, resamples=60, seed=3)
    c = lc_win_rates(models, ref, resamples=60, seed=4)
    assert a == b
    assert a["A"].lc_ci_low != c["A"].lc_ci_low
    for r in a.values():
        assert r.ci_low < r.win_rate < r.ci_high
        assert r.lc_ci_low < r.lc_win_rate < r.lc_ci_high
        assert r.lc_ci_high - r.lc_ci_low < 15
        assert r.as_dict()["resamples"] == 60


def test_a_model_preferred_everywhere_has_nothing_to_control():
    r = lc_win_rate([1.0] * 6, [10, 50, 20, 90, 30, 40], [30] * 6, resamples=20)
    assert (r.win_rate, r.lc_win_rate, r.lc_ci_low, r.lc_ci_high) == (100.0, 100.0, 100.0, 100.0)
    assert r.coefficients == {"theta": None, "phi": None, "psi": None}
    lose = lc_win_rate([0.0] * 3, [1, 2, 3], [2, 2, 2], resamples=0)
    assert lose.lc_win_rate == 0.0 and not math.isnan(lose.win_rate)


@pytest.mark.parametrize(
    ("models", "ref", "kwargs", "match"),
    [
        ({"m": JudgedAnswers([0.5, 1.2], [1, 2])}, [1, 1], {}, r"\[0, 1\]"),
        ({"m": JudgedAnswers([0.5, float("nan")], [1, 2])}, [1, 1], {}, r"\[0, 1\]"),
        ({"m": JudgedAnswers([0.5], [1, 2])}, [1, 1], {}, "one preference"),
        ({}, [1, 1], {}, "at least one model"),
        ({"m": JudgedAnswers([0.5, 1], [1, 2])}, [1, 1], {"variant": "v2"}, "variant"),
        ({"m": JudgedAnswers([0.5, 1], [1, 2])}, [1, 1], {"confidence": 0}, "confidence"),
        ({"m": JudgedAnswers([0.5, 1], [1, 2])}, [1, 1], {"l2": 0.0}, "l2 > 0"),
    ],
)
def test_invalid_inputs_raise(models, ref, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lc_win_rates(models, ref, **kwargs)


def test_the_glm_refuses_preferences_without_a_finite_fit():
    with pytest.raises(ValueError, match="all 0 or all 1"):
        fit_length_glm([1.0, 1.0], [0.1, -0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_length_glm([1.5, 0.0], [0.1, -0.1])
