"""Arena-Hard v0.1 scores: a Bradley-Terry fit of judged games against one baseline, in Elo units.

Facts from Li et al. 2024 (arXiv 2406.11939) and lmarena/arena-hard-auto (``show_result.py`` and
``utils_math.py`` of the v0.1 releases: ``compute_mle_elo``, ``construct_style_matrices``):

* Every question is judged twice, once with each answer first. Each judgment is one of five
  verdicts, here in the evaluated model's view (:data:`VERDICTS`). A strong verdict (``A>>B``)
  counts as 3 games with that result, a weak one as 1 game, a tie as one game half won and half
  lost (the benchmark writes a tie as one won and one lost row and every other game twice: the
  same likelihood up to a factor of 2).
* Bradley-Terry: ``P(model beats baseline) = 1 / (1 + 10 ** ((R_baseline - R_model) / 400))``,
  fitted by maximum likelihood as a logistic regression without intercept. Ratings in Elo units
  (scale 400, base 10, initial rating 1000), baseline anchored at 1000; the score is that
  probability against the baseline, in percent as the benchmark prints it.
* Confidence interval: bootstrap percentiles at ``(1 - confidence) / 2`` and
  ``1 - (1 - confidence) / 2`` around the fit on all data (the benchmark: 100 rounds, 95 %).
* Style control (``--style-control``): per question, the differences between the model's and
  the baseline's answer in length, header count, list item count and bold count, each as
  ``(m - b) / (m + b + 1)``, then scaled, enter the same logistic fit as covariates with shared
  coefficients. The reported rating is the model's own term, i.e. with the style terms at 0.

Choices where the sources differ or are silent:

* Bootstrap unit: the question (a :class:`Battle` with both games and a strong verdict's
  weight), resampled within each model so each keeps its question count. The v0.1 script
  resamples weighted game rows of all models pooled, as if a question's games were independent.
* Penalty ``l2 / 2 * sum(params ** 2)`` (natural log-odds), default 1e-6: far below 0.01 Elo on
  real data, but a model that won (lost) every game gets a finite rating and a win rate of 100 %
  (0 %) within about 1e-6, never NaN or infinity.
* Style scaling: the reference also centres each feature over all games, so its "style at 0" is
  the models' average style gap. Here features are only divided by their root mean square, so
  "style at 0" means equal length and markdown, which moves a length-inflated score toward 50 %.
* Markdown counts are raw counts per answer as in the v0.1 style control (v2 uses densities),
  counted by :func:`count_markdown` outside fenced code blocks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from moaa_cluster.evaluation.winrate import _check_confidence, _sigmoid

# verdict (model's view) -> (the model's score in that game, its weight in games)
VERDICTS: dict[str, tuple[float, float]] = {
    "strong_win": (1.0, 3.0),
    "win": (1.0, 1.0),
    "tie": (0.5, 1.0),
    "loss": (0.0, 1.0),
    "strong_loss": (0.0, 3.0),
}
SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0  # Elo units as Arena-Hard reports them
STYLE_FEATURES = ("length", "headers", "list_items", "bold")

_FENCE = re.compile(r"```.*?```", re.DOTALL)
_HEADER = re.compile(r"^#{1,6}[ \t]", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+\.)[ \t]", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


@dataclass(frozen=True)
class Battle:
    """One question judged for one model against the baseline.

    Attributes:
        model: The evaluated model's name.
        verdicts: The question's judged games, normally two (one per answer order), each a key
            of :data:`VERDICTS` in the model's view. Leave unparsed games out; Arena-Hard drops
            the whole question when either of its games is unparsed.
        model_style: ``(length, headers, list_items, bold)`` of the model's answer, see
            :func:`answer_style`; needed for style control only.
        baseline_style: The same for the baseline's answer to this question.
    """

    model: str
    verdicts: tuple[str, ...]
    model_style: tuple[float, ...] | None = None
    baseline_style: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ArenaHardScore:
    """One model's Bradley-Terry rating and win rate against the baseline.

    Attributes:
        model: The model's name.
        rating: Elo rating, the baseline at 1000.
        rating_ci_low: Lower bootstrap percentile of the rating (``None`` without resamples).
        rating_ci_high: Upper bootstrap percentile of the rating.
        win_rate: ``100 / (1 + 10 ** ((1000 - rating) / 400))``, percent.
        ci_low: ``rating_ci_low`` as a win rate, percent.
        ci_high: ``rating_ci_high`` as a win rate, percent.
        questions: Battles (questions) of this model.
        games: Verdicts of this model, unweighted.
        weighted_wins: Sum of weight x score over its games (a tie gives 0.5).
        weighted_losses: Sum of weight x (1 - score).
    """

    model: str
    rating: float
    rating_ci_low: float | None
    rating_ci_high: float | None
    win_rate: float
    ci_low: float | None
    ci_high: float | None
    questions: int
    games: int
    weighted_wins: float
    weighted_losses: float


@dataclass(frozen=True)
class ArenaHardResult:
    """The fit of all models against one baseline.

    Attributes:
        baseline: The baseline's name (rating 1000, win rate 50 % by definition).
        scores: Model name -> :class:`ArenaHardScore`.
        style_control: Whether the style covariates were in the fit.
        style_coefficients: Feature -> coefficient (natural log-odds per scaled unit), or None.
        confidence: The intervals' level.
        resamples: Bootstrap rounds behind the intervals.
        l2: The penalty weight used.
    """

    baseline: str
    scores: dict[str, ArenaHardScore]
    style_control: bool
    style_coefficients: dict[str, float] | None
    confidence: float
    resamples: int
    l2: float

    def as_dict(self) -> dict:
        return asdict(self)


def count_markdown(text: str) -> dict[str, int]:
    """Markdown elements of an answer, outside fenced (```) code blocks.

    Headers are lines starting with 1-6 ``#`` and a space; list items are lines starting (after
    indentation) with ``-``, ``*``, ``+`` or ``1.``-style numbers and a space; bold spans are
    ``**text**`` or ``__text__`` within one line (the patterns of arena-hard-auto's
    ``add_markdown_info.py``).

    Returns:
        ``{"headers": ..., "list_items": ..., "bold": ...}``.
    """
    body = _FENCE.sub("", text)
    return {
        "headers": len(_HEADER.findall(body)),
        "list_items": len(_LIST_ITEM.findall(body)),
        "bold": len(_BOLD.findall(body)),
    }


def answer_style(text: str, length: float | None = None) -> tuple[float, float, float, float]:
    """``(length, headers, list_items, bold)`` of an answer, for :class:`Battle`.

    Args:
        text: The answer.
        length: Its length in tokens if known (the benchmark counts tokens); default characters.
    """
    counts = count_markdown(text)
    size = float(len(text) if length is None else length)
    return (size, float(counts["headers"]), float(counts["list_items"]), float(counts["bold"]))


def style_differences(model_style: np.ndarray, baseline_style: np.ndarray) -> np.ndarray:
    """Scaled style covariates: ``(m - b) / (m + b + 1)`` per feature, over its root mean square.

    Args:
        model_style: ``(questions, 4)`` features of the model answers (non-negative).
        baseline_style: The same shape for the baseline answers.

    Returns:
        ``(questions, 4)`` covariates; a feature that never differs stays 0.

    Raises:
        ValueError: Shapes differ or a feature is negative.
    """
    m = np.asarray(model_style, dtype=float)
    b = np.asarray(baseline_style, dtype=float)
    if m.shape != b.shape or m.ndim != 2:
        raise ValueError("model and baseline style must be (questions, features) of one shape")
    if np.any(m < 0) or np.any(b < 0):
        raise ValueError("style features are counts and lengths, never negative")
    d = (m - b) / (m + b + 1.0)
    rms = np.sqrt(np.mean(d**2, axis=0))
    return np.divide(d, rms, out=np.zeros_like(d), where=rms > 0)


def newton_maximize(
    objective: Callable[[np.ndarray], float],
    direction: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> np.ndarray:
    """Maximizes a concave ``objective`` from ``start`` by Newton steps with step halving.

    ``direction(x)`` returns the Newton step at ``x`` (the inverse negative Hessian times the
    gradient). Stops when a step's largest component is below ``tol``.
    """
    x = np.asarray(start, dtype=float)
    current = objective(x)
    for _ in range(max_iter):
        step = direction(x)
        t, candidate = 1.0, x + step
        value = objective(candidate)
        while value < current - 1e-12 and t > 1e-8:  # concave: a full step rarely overshoots
            t /= 2
            candidate = x + t * step
            value = objective(candidate)
        x, current = candidate, value
        if np.max(np.abs(t * step), initial=0.0) < tol:
            break
    return x


def fit_weighted_logistic(
    design: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    penalty: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Penalized weighted logistic regression (no implicit intercept), by Newton's method.

    Maximizes ``sum(w * (y * z - log(1 + exp(z)))) - sum(penalty * beta ** 2) / 2`` with
    ``z = design @ beta``. Targets may be fractional in [0, 1] (a tie as 0.5).

    Args:
        design: ``(rows, params)``; add a column of ones for an intercept.
        targets: ``(rows,)`` in [0, 1].
        weights: ``(rows,)`` non-negative row weights; default all 1.
        penalty: L2 weight per parameter (or one for all); 0 leaves a parameter free.

    Returns:
        The fitted ``beta``. A free parameter with no finite maximum (e.g. an intercept with all
        targets 1) grows until the step limit; callers guard that case.
    """
    x = np.asarray(design, dtype=float)
    y = np.asarray(targets, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    pen = np.broadcast_to(np.asarray(penalty, dtype=float), (x.shape[1],))

    def objective(beta: np.ndarray) -> float:
        z = x @ beta
        return float(np.sum(w * (y * z - np.logaddexp(0.0, z))) - 0.5 * np.sum(pen * beta**2))

    def direction(beta: np.ndarray) -> np.ndarray:
        p = _sigmoid(x @ beta)
        grad = x.T @ (w * (y - p)) - pen * beta
        hess = x.T @ (x * (w * p * (1 - p))[:, None]) + np.diag(pen)
        return np.linalg.solve(hess, grad)

    return newton_maximize(objective, direction, np.zeros(x.shape[1]))


def rating_of(log_odds: np.ndarray | float) -> np.ndarray | float:
    """Elo rating of a natural log-odds against the baseline: ``1000 + 400 * log10(odds)``."""
    return INIT_RATING + SCALE * np.asarray(log_odds) / math.log(BASE)


def win_rate_of(
    rating: np.ndarray | float, baseline_rating: float = INIT_RATING
) -> np.ndarray | float:
    """Percent: ``100 / (1 + 10 ** ((baseline_rating - rating) / 400))``."""
    return 100.0 / (1.0 + BASE ** ((baseline_rating - np.asarray(rating, dtype=float)) / SCALE))


@dataclass(frozen=True)
class _Games:
    """The expanded games: one row per verdict, with the question (unit) it belongs to."""

    models: list[str]
    unit_model: np.ndarray  # model index per unit (question)
    unit: np.ndarray  # unit index per game
    design: np.ndarray  # (games, models [+ style features])
    y: np.ndarray  # the model's score per game
    w: np.ndarray  # the verdict's weight per game


def _expand(battles: Sequence[Battle], style_control: bool, baseline: str) -> _Games:
    bad = sorted({v for b in battles for v in b.verdicts if v not in VERDICTS})
    if bad:
        raise ValueError(f"verdicts must be one of {sorted(VERDICTS)}; got {bad}")
    if any(not b.verdicts for b in battles):
        raise ValueError("every battle needs at least one verdict (drop unparsed questions)")
    models = sorted({b.model for b in battles})
    if baseline in models:
        raise ValueError(f"the baseline {baseline!r} cannot also be an evaluated model")
    index = {m: i for i, m in enumerate(models)}
    unit_model = np.array([index[b.model] for b in battles], dtype=int)
    unit = np.array([u for u, b in enumerate(battles) for _ in b.verdicts], dtype=int)
    y, w = np.array([VERDICTS[v] for b in battles for v in b.verdicts], dtype=float).T
    design = np.eye(len(models))[unit_model[unit]]
    if style_control:
        if any(b.model_style is None or b.baseline_style is None for b in battles):
            raise ValueError("style control needs model_style and baseline_style on every battle")
        s = style_differences(
            np.array([b.model_style for b in battles]),
            np.array([b.baseline_style for b in battles]),
        )
        design = np.hstack([design, s[unit]])
    return _Games(models, unit_model, unit, design, y, w)


def _bootstrap(games: _Games, resamples: int, seed: int, l2: float) -> np.ndarray:
    """Fitted parameters per round, questions resampled within each model."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(games.unit_model == m) for m in range(len(games.models))]
    fits = []
    for _ in range(resamples):
        counts = np.zeros(games.unit_model.size)
        for g in groups:
            np.add.at(counts, g[rng.integers(0, g.size, size=g.size)], 1.0)
        fits.append(fit_weighted_logistic(games.design, games.y, games.w * counts[games.unit], l2))
    return np.array(fits).reshape(resamples, games.design.shape[1])


def _score(games: _Games, m: int, theta: float, boot: np.ndarray, alpha: float) -> ArenaHardScore:
    mine = games.unit_model[games.unit] == m
    rating = float(rating_of(theta))
    low = high = None
    if boot.size:
        low = float(np.quantile(rating_of(boot[:, m]), alpha))
        high = float(np.quantile(rating_of(boot[:, m]), 1.0 - alpha))
    return ArenaHardScore(
        model=games.models[m],
        rating=rating,
        rating_ci_low=low,
        rating_ci_high=high,
        win_rate=float(win_rate_of(rating)),
        ci_low=None if low is None else float(win_rate_of(low)),
        ci_high=None if high is None else float(win_rate_of(high)),
        questions=int(np.sum(games.unit_model == m)),
        games=int(mine.sum()),
        weighted_wins=float(np.sum(games.w[mine] * games.y[mine])),
        weighted_losses=float(np.sum(games.w[mine] * (1 - games.y[mine]))),
    )


def arena_hard_scores(
    battles: Sequence[Battle],
    *,
    baseline: str = "baseline",
    style_control: bool = False,
    resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = 1e-6,
) -> ArenaHardResult:
    """Bradley-Terry ratings and win rates of one or more models against one baseline.

    Args:
        battles: One :class:`Battle` per (model, question); several models may share the
            baseline's answers (e.g. base, SFT and DPO models), all are fitted together.
        baseline: The baseline's name, for the result only.
        style_control: Add the style covariates (needs the battles' style tuples).
        resamples: Bootstrap rounds (the benchmark uses 100); 0 gives no intervals.
        confidence: Interval level.
        seed: Bootstrap seed: same inputs and seed, same intervals.
        l2: Penalty weight on every parameter (see the module notes); must be > 0.

    Returns:
        An :class:`ArenaHardResult`.

    Raises:
        ValueError: No battles, an unknown verdict, an empty battle, missing style tuples,
            the baseline among the models, ``l2 <= 0`` or a confidence outside (0, 1).
    """
    if not battles:
        raise ValueError("no battles")
    if l2 <= 0:
        raise ValueError("l2 must be > 0 (it keeps all-win and all-loss fits finite)")
    _check_confidence(confidence)
    games = _expand(battles, style_control, baseline)
    beta = fit_weighted_logistic(games.design, games.y, games.w, l2)
    boot = _bootstrap(games, max(resamples, 0), seed, l2)
    alpha = (1.0 - confidence) / 2.0
    k = len(games.models)
    return ArenaHardResult(
        baseline=baseline,
        scores={
            m: _score(games, i, float(beta[i]), boot, alpha) for i, m in enumerate(games.models)
        },
        style_control=style_control,
        style_coefficients=(
            dict(zip(STYLE_FEATURES, map(float, beta[k:]), strict=True)) if style_control else None
        ),
        confidence=confidence,
        resamples=max(resamples, 0),
        l2=l2,
    )
