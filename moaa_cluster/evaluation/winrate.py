"""Pairwise win rates: counts, bootstrap confidence intervals, length-controlled win rate.

Pure numpy. An outcome is the evaluated model's result against the baseline on one question:
``"win"``, ``"tie"`` or ``"loss"`` (scored 1, 0.5, 0). The win rate is the mean score, so a
tie counts as half a win (AlpacaEval and Arena-Hard report it the same way).

The length-controlled win rate follows the idea of AlpacaEval 2 (Dubois et al., 2024,
arXiv 2404.04475): judges favour longer answers, so regress the preference on the length
difference and report the win rate the fit predicts when both answers have the same length.
Here that is a logistic regression of the score on the length difference divided by its
standard deviation, with a small L2 penalty on the slope so that a perfectly separated small
sample still has a finite fit; the intercept is not penalized, and ``sigmoid(intercept)`` is
the length-controlled win rate. The fit is Newton's method on the penalized log-likelihood
(scores of 0.5 enter as fractional targets, which the likelihood accepts as is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

OUTCOME_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(frozen=True)
class WinRate:
    """Win/tie/loss of a model against a baseline and the rates derived from them.

    Attributes:
        n: Judged questions (wins + ties + losses).
        wins: Questions the model won.
        ties: Questions judged a tie.
        losses: Questions the baseline won.
        win_rate: Mean score (tie = half), ``None`` without judged questions.
        ci_low: Lower end of the bootstrap percentile interval of ``win_rate``.
        ci_high: Upper end of that interval.
        lc_win_rate: Length-controlled win rate, ``None`` when not computed.
        lc_ci_low: Lower end of the bootstrap interval of ``lc_win_rate``.
        lc_ci_high: Upper end of that interval.
        confidence: The intervals' confidence level.
        resamples: Bootstrap resamples behind the intervals.
    """

    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    lc_win_rate: float | None = None
    lc_ci_low: float | None = None
    lc_ci_high: float | None = None
    confidence: float = 0.95
    resamples: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def scores_of(outcomes: Sequence[str]) -> np.ndarray:
    """Scores (1, 0.5, 0) of ``"win"``/``"tie"``/``"loss"`` outcomes.

    Raises:
        ValueError: An outcome is none of the three.
    """
    bad = sorted({o for o in outcomes if o not in OUTCOME_SCORES})
    if bad:
        raise ValueError(f"outcomes must be win, tie or loss; got {bad}")
    return np.asarray([OUTCOME_SCORES[o] for o in outcomes], dtype=float)


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``samples``.

    Args:
        samples: Per-question scores.
        resamples: Number of resamples with replacement.
        confidence: Interval level, e.g. 0.95 for the 2.5th and 97.5th percentiles.
        seed: Seed of the resampling (same inputs, same interval).

    Returns:
        ``(low, high)``, or ``None`` for an empty sample or ``resamples < 1``.
    """
    x = np.asarray(samples, dtype=float)
    if x.size == 0 or resamples < 1:
        return None
    _check_confidence(confidence)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def fit_logistic(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    l2: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[float, float]:
    """Fits ``P(y=1) = sigmoid(b0 + b1 * x)`` by penalized maximum likelihood (Newton).

    ``y`` may be fractional in [0, 1] (a tie as 0.5). The penalty ``l2 / 2 * b1**2`` keeps the
    slope finite when ``x`` separates the outcomes; the intercept is free.

    Args:
        x: One predictor value per observation.
        y: Targets in [0, 1]; not all 0 and not all 1 (the intercept would be infinite).
        l2: Penalty weight on the slope; must be > 0.
        max_iter: Newton steps at most.
        tol: Stop when the step's largest component is below this.

    Returns:
        ``(b0, b1)``.

    Raises:
        ValueError: Empty or mismatched inputs, targets outside [0, 1] or all equal to 0 or
            1, or ``l2 <= 0``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("x and y must be non-empty 1-d arrays of the same length")
    if np.any((y < 0) | (y > 1)):
        raise ValueError("targets must lie in [0, 1]")
    if np.all(y == 0) or np.all(y == 1):
        raise ValueError("targets all 0 or all 1: the intercept has no finite fit")
    if l2 <= 0:
        raise ValueError("l2 must be > 0")
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([0.0, l2])

    def objective(b: np.ndarray) -> float:
        z = design @ b
        # log-likelihood of fractional targets: y*log(p) + (1-y)*log(1-p), written stably
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * l2 * b[1] ** 2)

    mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    beta = np.array([np.log(mean / (1 - mean)), 0.0])
    current = objective(beta)
    for _ in range(max_iter):
        p = _sigmoid(design @ beta)
        grad = design.T @ (y - p) - penalty @ beta
        w = p * (1 - p)
        hess = design.T @ (design * w[:, None]) + penalty
        step = np.linalg.solve(hess, grad)
        # the objective is concave, so a full Newton step rarely overshoots; halve if it does
        t = 1.0
        while t > 1e-8:
            candidate = beta + t * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            t /= 2
        beta, current = candidate, value
        if np.max(np.abs(t * step)) < tol:
            break
    return float(beta[0]), float(beta[1])


def normalized_length_difference(
    model_lengths: Sequence[float] | np.ndarray, baseline_lengths: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``(model - baseline) / std(model - baseline)``; zeros when the difference is constant."""
    d = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    sd = float(d.std()) if d.size else 0.0
    return d / sd if sd > 0 else np.zeros_like(d)


def length_controlled(scores: np.ndarray, x: np.ndarray, *, l2: float = 0.1) -> float:
    """Win rate predicted at zero length difference by the logistic fit of ``scores`` on ``x``.

    With every score 1 (or 0) there is nothing to control for: the result is that score.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        raise ValueError("no scores")
    if np.all(scores == scores[0]) and scores[0] in (0.0, 1.0):
        return float(scores[0])
    b0, _ = fit_logistic(x, scores, l2=l2)
    return float(_sigmoid(np.asarray(b0)))


def win_rate(
    outcomes: Sequence[str],
    *,
    model_lengths: Sequence[float] | None = None,
    baseline_lengths: Sequence[float] | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = 0.1,
) -> WinRate:
    """Win/tie/loss, win rate with a bootstrap interval, and optionally the LC win rate.

    Args:
        outcomes: ``"win"``/``"tie"``/``"loss"`` per judged question (the model's view).
        model_lengths: Lengths of the model's answers; with ``baseline_lengths`` turns on the
            length-controlled win rate.
        baseline_lengths: Lengths of the baseline's answers, same order.
        resamples: Bootstrap resamples (0: no intervals).
        confidence: Interval level.
        seed: Bootstrap seed; the same resampled questions serve both intervals.
        l2: Slope penalty of the length regression.

    Returns:
        A :class:`WinRate`.
    """
    y = scores_of(outcomes)
    n = int(y.size)
    counts = {o: sum(1 for v in outcomes if v == o) for o in OUTCOME_SCORES}
    if n == 0:
        return WinRate(0, 0, 0, 0, None, confidence=confidence, resamples=resamples)
    _check_confidence(confidence)
    ci = bootstrap_ci(y, resamples=resamples, confidence=confidence, seed=seed)
    lc = lc_low = lc_high = None
    if model_lengths is not None and baseline_lengths is not None:
        if len(model_lengths) != n or len(baseline_lengths) != n:
            raise ValueError("one model and one baseline length per outcome")
        x = normalized_length_difference(model_lengths, baseline_lengths)
        lc = length_controlled(y, x, l2=l2)
        if resamples > 0:
            # same resampled questions as the plain interval (same seed, same draw)
            idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
            lcs = np.array([length_controlled(y[i], x[i], l2=l2) for i in idx])
            alpha = (1.0 - confidence) / 2.0
            lc_low = float(np.quantile(lcs, alpha))
            lc_high = float(np.quantile(lcs, 1.0 - alpha))
    return WinRate(
        n=n,
        wins=counts["win"],
        ties=counts["tie"],
        losses=counts["loss"],
        win_rate=float(y.mean()),
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        lc_win_rate=lc,
        lc_ci_low=lc_low,
        lc_ci_high=lc_high,
        confidence=confidence,
        resamples=resamples,
    )
