"""MT-Bench aggregates of single-answer grades (Zheng et al. 2023, arXiv 2306.05685).

The judge grades each of the two turns of an MT-Bench question from 1 to 10. FastChat's
``show_result.py`` (single mode) drops the grades it could not parse (written as -1), then
reports the mean of turn 1, the mean of turn 2 and the mean over every graded turn ("Average").
Its category tables and radar plot average a category over both turns. Here:

* ``turn_1`` / ``turn_2``: mean of the parsed grades of that turn.
* ``overall``: mean over every parsed grade, both turns pooled (not the mean of the two turn
  means: with unparsed grades the two differ).
* ``per_category``: mean over every parsed grade of that category's questions, both turns.
* ``scored`` and ``unparsed``: parsed and unparsed grades, so nothing is dropped silently.
* Optional bootstrap interval of ``overall``: questions with at least one parsed grade are
  resampled with replacement (both turns of a question stay together, since they share the
  question and the conversation), and ``overall`` is recomputed on each resample.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from moaa_cluster.evaluation.winrate import _check_confidence

MIN_SCORE = 1.0
MAX_SCORE = 10.0


class TurnScore(NamedTuple):
    """One judged turn: a question's id, its category, the turn (1 or 2) and the grade.

    ``score`` is ``None`` when the judge's grade could not be parsed.
    """

    question_id: Hashable
    category: str
    turn: int
    score: float | None


@dataclass(frozen=True)
class MTBenchScores:
    """MT-Bench aggregates on the 1-10 scale.

    Attributes:
        overall: Mean over every parsed grade (``None`` if there is none).
        turn_1: Mean of the parsed turn-1 grades.
        turn_2: Mean of the parsed turn-2 grades.
        per_category: Category -> mean of its parsed grades, both turns (categories with no
            parsed grade are absent here but present in ``category_counts`` with 0).
        scored: Parsed grades.
        unparsed: Grades the judge's output gave none for.
        turn_counts: Turn -> parsed grades of that turn.
        category_counts: Category -> parsed grades of that category.
        ci_low: Lower bootstrap percentile of ``overall`` (``None`` without resamples).
        ci_high: Upper one.
        confidence: The interval's level.
        resamples: Bootstrap resamples.
    """

    overall: float | None
    turn_1: float | None
    turn_2: float | None
    per_category: dict[str, float]
    scored: int
    unparsed: int
    turn_counts: dict[int, int]
    category_counts: dict[str, int]
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    resamples: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _validated(rows: Sequence[Sequence]) -> list[TurnScore]:
    """The rows as :class:`TurnScore`, checked.

    Raises:
        ValueError: A row without 4 fields, a turn other than 1 or 2, a grade that is not a
            finite number in [1, 10], a (question, turn) twice, or a question in two categories.
    """
    out, seen, category_of = [], set(), {}
    for row in rows:
        if len(row) != 4:
            raise ValueError(f"rows are (question_id, category, turn, score), got {row!r}")
        r = TurnScore(*row)
        if r.turn not in (1, 2) or isinstance(r.turn, bool):
            raise ValueError(f"turn must be 1 or 2, got {r.turn!r} ({r.question_id!r})")
        if r.score is not None:
            if isinstance(r.score, bool) or not isinstance(r.score, numbers.Real):
                raise ValueError(f"score must be a number or None, got {r.score!r}")
            if not (math.isfinite(r.score) and MIN_SCORE <= r.score <= MAX_SCORE):
                raise ValueError(f"score must lie in [1, 10], got {r.score!r} ({r.question_id!r})")
        if (r.question_id, r.turn) in seen:
            raise ValueError(f"question {r.question_id!r} turn {r.turn} appears twice")
        if category_of.setdefault(r.question_id, r.category) != r.category:
            raise ValueError(f"question {r.question_id!r} has two categories")
        seen.add((r.question_id, r.turn))
        out.append(r)
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _overall_ci(
    graded: list[TurnScore], resamples: int, confidence: float, seed: int
) -> tuple[float, float] | None:
    """Percentile interval of the pooled mean, questions resampled with replacement."""
    questions = sorted({r.question_id for r in graded}, key=repr)
    if not questions or resamples < 1:
        return None
    index = {q: i for i, q in enumerate(questions)}
    sums, counts = np.zeros(len(questions)), np.zeros(len(questions))
    for r in graded:
        sums[index[r.question_id]] += float(r.score)
        counts[index[r.question_id]] += 1
    draws = np.random.default_rng(seed).integers(0, len(questions), (resamples, len(questions)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def mt_bench_scores(
    rows: Sequence[Sequence],
    *,
    resamples: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> MTBenchScores:
    """Per-turn, per-category and overall means of MT-Bench grades.

    Args:
        rows: ``(question_id, category, turn, score)`` per judged turn (:class:`TurnScore` or
            any 4-sequence); ``score`` is a number in [1, 10] or ``None`` if unparsed.
        resamples: Bootstrap resamples for an interval of ``overall``; 0 (default) for none.
        confidence: Interval level.
        seed: Bootstrap seed: same rows and seed, same interval.

    Returns:
        An :class:`MTBenchScores`.

    Raises:
        ValueError: An invalid row (see the checks of each field) or a confidence outside (0, 1).
    """
    _check_confidence(confidence)
    checked = _validated(rows)
    graded = [r for r in checked if r.score is not None]
    categories = sorted({r.category for r in checked})
    by_category = {c: [float(r.score) for r in graded if r.category == c] for c in categories}
    by_turn = {t: [float(r.score) for r in graded if r.turn == t] for t in (1, 2)}
    ci = _overall_ci(graded, resamples, confidence, seed)
    return MTBenchScores(
        overall=_mean([float(r.score) for r in graded]),
        turn_1=_mean(by_turn[1]),
        turn_2=_mean(by_turn[2]),
        per_category={c: float(np.mean(v)) for c, v in by_category.items() if v},
        scored=len(graded),
        unparsed=len(checked) - len(graded),
        turn_counts={t: len(v) for t, v in by_turn.items()},
        category_counts={c: len(v) for c, v in by_category.items()},
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        confidence=confidence,
        resamples=max(resamples, 0),
    )
