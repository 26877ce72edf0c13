"""AlpacaEval 2 length-controlled (LC) win rate (Dubois et al. 2024, arXiv 2404.04475).

Input per evaluated model and per instruction of one fixed set, all against one reference answer
set: the judge's soft preference ``p`` in [0, 1] for the model's answer (not binarized; a tie is
0.5), the model answer's length and the reference answer's length (the reference counts
characters). Formulas (paper Sec. 3; tatsu-lab/alpaca_eval ``metrics/glm_winrate.py``):

* win rate ``= 100 * mean_x p_x``.
* length term ``t_x = tanh(d_x / sd(d))`` with ``d_x = len(model_x) - len(reference_x)`` and
  ``sd`` the sample standard deviation over the instructions (ddof 1, pandas' ``std`` in the
  reference). The reference takes ``reference - model``; tanh is odd, so only the sign of the
  fitted slope differs.
* GLM: ``logit q_x = theta + phi * t_x + psi * gamma_x``, fitted to the soft ``p_x``.
* LC win rate ``= 100 * mean_x sigmoid(theta + psi * gamma_x)``: the fit's prediction with the
  length term set to 0, i.e. as if both answers had the same length.

Variants (the reference's ``GLM_INFO`` names):

* ``"minimal"`` (``length_controlled_minimal``): no difficulty term; one model is enough.
* ``"v1"`` (``length_controlled_v1``): ``gamma_x`` is the instruction difficulty. The reference
  estimated it once from the whole leaderboard (``notebooks/instruction_difficulty.ipynb``) with
  the joint model ``logit q_mx = theta_m + phi_m * t_mx + gamma_x`` and ships it as a file; here
  the same joint model is fitted on the models passed in, so v1 needs at least 2 of them and
  falls back to ``"minimal"`` with one (the result says which variant ran). With the difficulty
  fixed, each model then gets its own GLM as above.

Choices where this differs from the reference (which needs data we do not have):

* Regularization: the reference uses an L1 penalty chosen by 5-fold cross-validation
  (scikit-learn, intercept penalized too) and, in v1, "regularizes to the baseline" with extra
  rows of the reference model prompted to be verbose or concise (weight 0.2). Here the per-model
  GLM has an L2 penalty ``l2 / 2 * (phi ** 2 + psi ** 2)`` (default 0.1, as the house LC fit in
  ``winrate.py``) and a free ``theta``. A free intercept makes the fitted ``q`` average to the
  mean ``p``, so when no length differs the LC win rate equals the plain one (to ~1e-9).
* The joint difficulty fit penalizes ``difficulty_l2 / 2 * sum(gamma ** 2)`` (default 0.25, a
  Gaussian prior of sd 2 logits on an instruction's difficulty) and
  ``l2 / 2 * sum(theta_m ** 2 + phi_m ** 2)``, which keeps it finite when an instruction or a
  model wins everywhere; ``gamma`` is then centred (the per-model ``theta`` absorbs any shift).
* Degenerate: a model with every ``p = 1`` (or 0) has LC win rate 100 (0): nothing to control.
* Interval: the reference reports a standard error of the predictions; here a percentile
  bootstrap over instructions (one draw for all models, as v1 shares ``gamma``) refits
  everything (``sd``, ``gamma``, each GLM) on each resample, given as instruction multiplicities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from moaa_cluster.evaluation.bradley_terry import fit_weighted_logistic, newton_maximize
from moaa_cluster.evaluation.winrate import _check_confidence, _sigmoid

VARIANTS = ("v1", "minimal")
DIFFICULTY_L2 = 0.25


@dataclass(frozen=True)
class JudgedAnswers:
    """One model's judged answers, in the instruction order of the reference lengths.

    Attributes:
        preferences: Per instruction, the judge's probability of preferring the model's answer.
        lengths: Per instruction, the model answer's length.
    """

    preferences: Sequence[float]
    lengths: Sequence[float]


@dataclass(frozen=True)
class LCWinRate:
    """Plain and length-controlled win rate of one model against the reference, in percent.

    Attributes:
        model: The model's name.
        n: Instructions.
        variant: The GLM that ran: ``"v1"`` or ``"minimal"``.
        win_rate: ``100 * mean(p)``.
        lc_win_rate: The length-controlled win rate.
        ci_low: Lower bootstrap percentile of ``win_rate`` (``None`` without resamples).
        ci_high: Upper one.
        lc_ci_low: Lower bootstrap percentile of ``lc_win_rate``.
        lc_ci_high: Upper one.
        coefficients: ``theta``, ``phi`` and ``psi`` (0 in minimal; ``None``s if degenerate).
        confidence: The intervals' level.
        resamples: Bootstrap resamples.
    """

    model: str
    n: int
    variant: str
    win_rate: float
    lc_win_rate: float
    ci_low: float | None
    ci_high: float | None
    lc_ci_low: float | None
    lc_ci_high: float | None
    coefficients: dict[str, float | None]
    confidence: float
    resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def length_term(
    model_lengths: Sequence[float] | np.ndarray,
    reference_lengths: Sequence[float] | np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``tanh(d / sd(d))``, ``d = model - reference``; zeros if ``sd`` is 0 or undefined.

    ``sd`` is the sample standard deviation (ddof 1) of ``d`` repeated ``weights`` times
    (default once each), as pandas computes it on a resampled frame.
    """
    d = np.asarray(model_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=float)
    total = float(w.sum())
    if total <= 1:
        return np.zeros_like(d)
    mean = float(np.sum(w * d)) / total
    sd = float(np.sqrt(np.sum(w * (d - mean) ** 2) / (total - 1)))
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def fit_length_glm(
    preferences: Sequence[float] | np.ndarray,
    length_terms: Sequence[float] | np.ndarray,
    difficulty: Sequence[float] | np.ndarray | None = None,
    *,
    weights: np.ndarray | None = None,
    l2: float = 0.1,
) -> tuple[float, float, float]:
    """Fits ``logit q = theta + phi * t + psi * gamma`` to soft preferences.

    Maximizes ``sum(w * (p * log q + (1 - p) * log(1 - q))) - l2 / 2 * (phi**2 + psi**2)``.

    Args:
        preferences: ``p`` per instruction, in [0, 1].
        length_terms: ``t`` per instruction (:func:`length_term`).
        difficulty: ``gamma`` per instruction; ``None`` fits the minimal GLM (``psi = 0``).
        weights: Instruction multiplicities; default 1.
        l2: Penalty on ``phi`` and ``psi``; ``theta`` is free.

    Returns:
        ``(theta, phi, psi)``.

    Raises:
        ValueError: Preferences outside [0, 1], or all (weighted) 0 or all 1 (no finite theta).
    """
    p = np.asarray(preferences, dtype=float)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float)
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("preferences must lie in [0, 1]")
    used = p[w > 0]
    if used.size == 0 or np.all(used == 1) or np.all(used == 0):
        raise ValueError("preferences all 0 or all 1: theta has no finite fit")
    columns = [np.ones_like(p), np.asarray(length_terms, dtype=float)]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, dtype=float))
    penalty = np.array([0.0] + [l2] * (len(columns) - 1))
    beta = fit_weighted_logistic(np.column_stack(columns), p, w, penalty)
    return float(beta[0]), float(beta[1]), float(beta[2]) if difficulty is not None else 0.0


def fit_instruction_difficulty(
    preferences: np.ndarray,
    length_terms: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    l2: float = 0.1,
    difficulty_l2: float = DIFFICULTY_L2,
) -> np.ndarray:
    """Joint fit of ``logit q_mx = theta_m + phi_m * t_mx + gamma_x`` over models ``m``.

    Maximizes the weighted soft log-likelihood minus ``l2 / 2 * sum(theta**2 + phi**2)`` and
    ``difficulty_l2 / 2 * sum(gamma**2)``, by Newton steps that eliminate the diagonal
    ``gamma`` block (Schur complement), so the cost grows linearly with the instructions.

    Args:
        preferences: ``(models, instructions)`` soft preferences in [0, 1].
        length_terms: ``(models, instructions)`` length terms.
        weights: ``(instructions,)`` multiplicities; default 1.
        l2: Penalty on ``theta_m`` and ``phi_m``; must be > 0.
        difficulty_l2: Penalty on ``gamma_x``; must be > 0.

    Returns:
        ``gamma``, centred to weighted mean 0.
    """
    p = np.asarray(preferences, dtype=float)
    t = np.asarray(length_terms, dtype=float)
    m, n = p.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if l2 <= 0 or difficulty_l2 <= 0:
        raise ValueError("the joint fit needs l2 > 0 and difficulty_l2 > 0")
    pen = np.concatenate([np.full(2 * m, l2), np.full(n, difficulty_l2)])

    def logits(x: np.ndarray) -> np.ndarray:
        return x[:m, None] + x[m : 2 * m, None] * t + x[None, 2 * m :]

    def objective(x: np.ndarray) -> float:
        z = logits(x)
        return float(np.sum(w * (p * z - np.logaddexp(0.0, z))) - 0.5 * np.sum(pen * x**2))

    def direction(x: np.ndarray) -> np.ndarray:
        q = _sigmoid(logits(x))
        r, v = w * (p - q), w * q * (1 - q)
        grad = np.concatenate([r.sum(1), (r * t).sum(1), r.sum(0)]) - pen * x
        cross = np.vstack([v, v * t])  # (2m, n): d2/d(theta, phi) d gamma
        a = np.diag(np.concatenate([v.sum(1), (v * t * t).sum(1)]) + pen[: 2 * m])
        a[range(m), range(m, 2 * m)] = a[range(m, 2 * m), range(m)] = (v * t).sum(1)
        d = v.sum(0) + difficulty_l2
        schur = a - (cross / d) @ cross.T
        step_a = np.linalg.solve(schur, grad[: 2 * m] - cross @ (grad[2 * m :] / d))
        return np.concatenate([step_a, (grad[2 * m :] - cross.T @ step_a) / d])

    gamma = newton_maximize(objective, direction, np.zeros(2 * m + n))[2 * m :]
    return gamma - np.sum(w * gamma) / max(float(w.sum()), 1e-12)


def _rates(
    p: np.ndarray, t: np.ndarray, w: np.ndarray, variant: str, l2: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...] | None]]:
    """Plain and LC win rates (percent) and GLM coefficients of every model (rows of p, t)."""
    gamma = fit_instruction_difficulty(p, t, weights=w, l2=l2) if variant == "v1" else None
    plain = 100.0 * (p @ w) / w.sum()
    lc, coefs = np.empty(len(p)), []
    for i in range(len(p)):
        used = p[i][w > 0]
        if np.all(used == used[0]) and used[0] in (0.0, 1.0):
            lc[i] = 100.0 * used[0]
            coefs.append(None)
            continue
        theta, phi, psi = fit_length_glm(p[i], t[i], gamma, weights=w, l2=l2)
        controlled = theta + (psi * gamma if gamma is not None else 0.0)
        lc[i] = 100.0 * float(np.sum(w * _sigmoid(np.asarray(controlled)))) / w.sum()
        coefs.append((theta, phi, psi))
    return plain, lc, coefs


def _arrays(
    models: Mapping[str, JudgedAnswers], reference_lengths: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = np.asarray(reference_lengths, dtype=float)
    if not models or ref.size == 0:
        raise ValueError("need at least one model and one instruction")
    for name, m in models.items():
        if len(m.preferences) != ref.size or len(m.lengths) != ref.size:
            raise ValueError(f"{name}: one preference and one length per reference instruction")
    p = np.array([np.asarray(m.preferences, dtype=float) for m in models.values()])
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("preferences must lie in [0, 1]")
    lengths = np.array([np.asarray(m.lengths, dtype=float) for m in models.values()])
    return p, lengths, ref


def lc_win_rates(
    models: Mapping[str, JudgedAnswers],
    reference_lengths: Sequence[float],
    *,
    variant: str = "v1",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = 0.1,
) -> dict[str, LCWinRate]:
    """Plain and length-controlled win rates of models judged against one reference set.

    Args:
        models: Name -> :class:`JudgedAnswers`, all on the instructions of ``reference_lengths``.
        reference_lengths: The reference answers' lengths, per instruction.
        variant: ``"v1"`` (joint difficulty; with one model ``"minimal"`` runs) or ``"minimal"``.
        resamples: Bootstrap resamples of the instructions (0: no intervals).
        confidence: Interval level.
        seed: Bootstrap seed: same inputs and seed, same intervals.
        l2: Penalty on the length and difficulty slopes (see the module notes).

    Returns:
        Name -> :class:`LCWinRate`.

    Raises:
        ValueError: Unknown variant, l2 <= 0, empty/misaligned inputs, p not in [0, 1], bad level.
    """
    if variant not in VARIANTS or not l2 > 0:
        raise ValueError(f"variant must be one of {VARIANTS} and l2 > 0; got {variant!r}, {l2}")
    _check_confidence(confidence)
    p, lengths, ref = _arrays(models, reference_lengths)
    used = variant if len(p) >= 2 else "minimal"
    n, resamples = ref.size, max(resamples, 0)

    def rates(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        t = np.array([length_term(row, ref, w) for row in lengths])
        return _rates(p, t, w, used, l2)

    plain, lc, coefs = rates(np.ones(n))
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = [rates(np.bincount(d, minlength=n).astype(float))[:2] for d in draws]
    alpha = (1.0 - confidence) / 2.0
    q = np.quantile(np.array(boot), [alpha, 1 - alpha], axis=0) if boot else None  # (2, 2, M)
    out = {}
    for i, name in enumerate(models):
        out[name] = LCWinRate(
            model=name,
            n=n,
            variant=used,
            win_rate=float(plain[i]),
            lc_win_rate=float(lc[i]),
            ci_low=None if q is None else float(q[0, 0, i]),
            ci_high=None if q is None else float(q[1, 0, i]),
            lc_ci_low=None if q is None else float(q[0, 1, i]),
            lc_ci_high=None if q is None else float(q[1, 1, i]),
            coefficients=dict(zip(("theta", "phi", "psi"), coefs[i] or (None,) * 3, strict=True)),
            confidence=confidence,
            resamples=resamples,
        )
    return out


def lc_win_rate(
    preferences: Sequence[float],
    model_lengths: Sequence[float],
    reference_lengths: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LCWinRate:
    """One model's plain and LC win rate (the ``"minimal"`` GLM; see :func:`lc_win_rates`)."""
    models = {"model": JudgedAnswers(preferences, model_lengths)}
    return lc_win_rates(
        models,
        reference_lengths,
        variant="minimal",
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )["model"]
