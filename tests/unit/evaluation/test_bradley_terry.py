"""Arena-Hard Bradley-Terry scores against closed forms, a direct likelihood fit and planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moaa_cluster.evaluation.bradley_terry import (
    Battle,
    answer_style,
    arena_hard_scores,
    count_markdown,
    fit_weighted_logistic,
    rating_of,
    style_differences,
    win_rate_of,
)


def _battles(model: str, verdicts: list[str]) -> list[Battle]:
    """Two games per question, in the given order (an odd tail becomes a one-game question)."""
    return [Battle(model, tuple(verdicts[i : i + 2])) for i in range(0, len(verdicts), 2)]


@pytest.mark.parametrize(
    ("verdicts", "wins", "losses"),
    [
        (["win", "win", "win", "loss"], 3.0, 1.0),
        (["strong_win", "loss"], 3.0, 1.0),  # a strong verdict is 3 games
        (["strong_loss", "win", "win", "tie"], 2.5, 3.5),  # a tie is half of each
        (["tie", "tie", "win", "strong_loss", "strong_win", "loss"], 5.0, 5.0),
        (["strong_win"] * 7 + ["loss", "tie"], 21.5, 1.5),
    ],
)
def test_one_model_win_rate_is_weighted_wins_over_games(verdicts, wins, losses):
    score = arena_hard_scores(_battles("m", verdicts), resamples=0).scores["m"]
    assert (score.weighted_wins, score.weighted_losses) == (wins, losses)
    assert score.win_rate / 100 == pytest.approx(wins / (wins + losses), abs=1e-6)
    # the Elo form of the same odds: 1000 + 400 * log10(W / L)
    assert score.rating == pytest.approx(1000 + 400 * math.log10(wins / losses), abs=1e-3)
    assert score.games == len(verdicts) and score.questions == math.ceil(len(verdicts) / 2)
    assert score.rating_ci_low is None and score.ci_high is None


def test_strong_verdicts_weigh_three_games():
    one_strong = arena_hard_scores(
        _battles("m", ["strong_win", "loss", "loss", "loss"]), resamples=0
    )
    one_weak = arena_hard_scores(_battles("m", ["win", "loss", "loss", "loss"]), resamples=0)
    # win rates are percent; 1e-4 points is the 1e-6 of a fraction (the tiny l2 moves it less)
    assert one_strong.scores["m"].win_rate == pytest.approx(50.0, abs=1e-4)
    assert one_weak.scores["m"].win_rate == pytest.approx(25.0, abs=1e-4)


def test_a_tie_is_one_won_and_one_lost_game_against_doubled_others():
    # the benchmark's rows: a tie -> one won + one lost row, every other game written twice.
    # [tie, win] is therefore the likelihood of [win, loss, win, win] (3 of 4 won)
    with_tie = arena_hard_scores(_battles("m", ["tie", "win"]), resamples=0).scores["m"]
    as_rows = arena_hard_scores(_battles("m", ["win", "loss", "win", "win"]), resamples=0)
    # equal up to the default l2 = 1e-6, which weighs twice as much on half the games
    assert with_tie.rating == pytest.approx(as_rows.scores["m"].rating, abs=1e-3)
    assert with_tie.win_rate == pytest.approx(75.0, abs=1e-4)


def test_ratings_are_elo_units_anchored_at_the_baseline():
    r = arena_hard_scores(
        _battles("ten_to_one", ["win"] * 10 + ["loss"])
        + _battles("even", ["win", "loss"])
        + _battles("one_to_ten", ["loss"] * 10 + ["win"]),
        baseline="gpt-4-0314",
        resamples=0,
    )
    assert r.baseline == "gpt-4-0314"
    assert r.scores["ten_to_one"].rating == pytest.approx(1400.0, abs=1e-3)
    assert r.scores["even"].rating == pytest.approx(1000.0, abs=1e-6)
    assert r.scores["one_to_ten"].rating == pytest.approx(600.0, abs=1e-3)
    assert r.scores["ten_to_one"].win_rate == pytest.approx(100 * 10 / 11, abs=1e-4)
    assert win_rate_of(1400.0) == pytest.approx(100 * 10 / 11)
    assert win_rate_of(1000.0, baseline_rating=1400.0) == pytest.approx(100 / 11)
    assert rating_of(math.log(10.0)) == pytest.approx(1400.0)


def _random_battles(rng: np.random.Generator, models: dict[str, list[float]], n: int):
    names = ["strong_win", "win", "tie", "loss", "strong_loss"]
    out = []
    for model, probs in models.items():
        for _ in range(n):
            verdicts = tuple(rng.choice(names, size=2, p=probs))
            style = (
                float(rng.integers(50, 900)),
                float(rng.integers(0, 4)),
                float(rng.integers(0, 3)),
                0.0,
            )
            base = (
                float(rng.integers(50, 900)),
                float(rng.integers(0, 4)),
                float(rng.integers(0, 3)),
                0.0,
            )
            out.append(Battle(model, verdicts, style, base))
    return out


def _benchmark_rows(battles, models, style):
    """The benchmark's own rows: strong x3, every game twice except a tie (one won, one lost)."""
    x, y = [], []
    for i, b in enumerate(battles):
        onehot = np.eye(len(models))[models.index(b.model)] * math.log(10)
        row = np.concatenate([onehot, style[i]]) if style is not None else onehot
        for v in b.verdicts:
            outcomes = {
                "strong_win": [1.0] * 6,
                "win": [1.0] * 2,
                "tie": [1.0, 0.0],
                "loss": [0.0] * 2,
                "strong_loss": [0.0] * 6,
            }[v]
            x += [row] * len(outcomes)
            y += outcomes
    return np.array(x), np.array(y)


def _direct_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    minimize = pytest.importorskip("scipy.optimize").minimize

    def nll(beta):
        z = x @ beta
        return np.sum(np.logaddexp(0.0, z) - y * z), x.T @ (1 / (1 + np.exp(-z)) - y)

    fit = minimize(nll, np.zeros(x.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-10})
    return fit.x


@pytest.mark.parametrize("style_control", [False, True])
def test_multi_model_fit_matches_a_direct_maximum_likelihood(style_control):
    rng = np.random.default_rng(7)
    battles = _random_battles(
        rng,
        {
            "base": [0.05, 0.2, 0.2, 0.35, 0.2],
            "sft": [0.1, 0.3, 0.2, 0.3, 0.1],
            "dpo": [0.25, 0.35, 0.15, 0.2, 0.05],
        },
        60,
    )
    r = arena_hard_scores(battles, style_control=style_control, resamples=0)
    models = sorted(r.scores)
    style = None
    if style_control:
        m = np.array([b.model_style for b in battles])
        b = np.array([b.baseline_style for b in battles])
        d = (m - b) / (m + b + 1)
        rms = np.sqrt((d**2).mean(axis=0))
        style = np.where(rms > 0, d / np.where(rms > 0, rms, 1), 0.0)
    beta = _direct_fit(*_benchmark_rows(battles, models, style))
    for i, name in enumerate(models):
        # beta is in log10 odds units (the benchmark's design has +-ln(10) entries)
        assert r.scores[name].rating == pytest.approx(1000 + 400 * beta[i], abs=1e-4)
    if style_control:
        coefs = list(r.style_coefficients.values())
        assert coefs == pytest.approx(list(beta[len(models) :]), abs=1e-5)
        assert coefs[3] == 0.0  # bold never differs: nothing to fit
    else:
        assert r.style_coefficients is None


def test_bootstrap_interval_contains_the_estimate_and_follows_the_seed():
    rng = np.random.default_rng(3)
    battles = _random_battles(rng, {"m": [0.1, 0.3, 0.2, 0.3, 0.1], "n": [0.3] + [0.175] * 4}, 80)
    a = arena_hard_scores(battles, resamples=100, seed=11)
    b = arena_hard_scores(battles, resamples=100, seed=11)
    c = arena_hard_scores(battles, resamples=100, seed=12)
    assert a == b
    assert a.as_dict() == b.as_dict()
    assert a.scores["m"].rating_ci_low != c.scores["m"].rating_ci_low
    for s in a.scores.values():
        assert s.rating_ci_low < s.rating < s.rating_ci_high
        assert s.ci_low < s.win_rate < s.ci_high
        assert s.ci_low == pytest.approx(win_rate_of(s.rating_ci_low))
        # 80 questions: the 95 % interval spans a few to ~25 points, not nothing nor everything
        assert 3 < s.ci_high - s.ci_low < 30


def test_bootstrap_keeps_a_questions_games_together():
    # every question is one win and one loss: resampling questions can never move the rating,
    # resampling the games one by one would
    r = arena_hard_scores(_battles("m", ["win", "loss"] * 40), resamples=50, seed=1)
    s = r.scores["m"]
    assert s.rating_ci_low == pytest.approx(1000.0, abs=1e-6)
    assert s.rating_ci_high == pytest.approx(1000.0, abs=1e-6)


def test_all_wins_and_all_losses_stay_finite():
    r = arena_hard_scores(
        _battles("winner", ["strong_win", "win"] * 30) + _battles("loser", ["loss"] * 60),
        resamples=20,
    )
    win, lose = r.scores["winner"], r.scores["loser"]
    values = [win.rating, win.rating_ci_low, win.win_rate, lose.rating, lose.ci_high]
    assert all(math.isfinite(v) for v in values)
    assert win.rating > 2000 and 99.99 < win.win_rate <= 100.0
    assert lose.rating < 0 and 0.0 <= lose.win_rate < 0.01


def test_style_control_removes_a_pure_length_advantage():
    rng = np.random.default_rng(0)
    battles = []
    for _ in range(600):
        base = 500.0
        longer = base * math.exp(rng.normal(0.4, 0.8))  # mostly longer than the baseline
        d = (longer - base) / (longer + base + 1)
        p_win = 1 / (1 + math.exp(-5 * d))  # the judge only looks at length
        verdicts = tuple("win" if rng.random() < p_win else "loss" for _ in range(2))
        battles.append(Battle("verbose", verdicts, (longer, 0, 0, 0), (base, 0, 0, 0)))
        verdicts = tuple("win" if rng.random() < 0.6 else "loss" for _ in range(2))
        battles.append(Battle("plain", verdicts, (base, 2, 3, 1), (base, 2, 3, 1)))
    raw = arena_hard_scores(battles, resamples=0)
    controlled = arena_hard_scores(battles, style_control=True, resamples=0)
    assert raw.scores["verbose"].win_rate > 60
    assert abs(controlled.scores["verbose"].win_rate - 50) < 4
    assert controlled.style_coefficients["length"] > 0.5
    # a model whose answers match the baseline's style keeps its score
    assert controlled.scores["plain"].win_rate == pytest.approx(
        raw.scores["plain"].win_rate, abs=1e-6
    )


def test_count_markdown_and_answer_style():
    text = (
        "# Title\n"
        "## Part\n"
        "#hashtag is not a header\n"
        "- one\n"
        "* two\n"
        "  + nested\n"
        "1. first\n"
        "12. twelfth\n"
        "Some **bold** and __more__ and ** not bold\n"
        "**Note**: not a list item\n"
        "```\n# comment in code\n- not a list\n**not bold**\n```\n"
    )
    assert count_markdown(text) == {"headers": 2, "list_items": 5, "bold": 3}
    assert answer_style(text) == (float(len(text)), 2.0, 5.0, 3.0)
    assert answer_style("plain", length=17) == (17.0, 0.0, 0.0, 0.0)


def test_style_differences_by_hand():
    m = np.array([[3.0, 0.0, 2.0, 5.0], [1.0, 0.0, 2.0, 5.0]])
    b = np.array([[1.0, 0.0, 0.0, 5.0], [3.0, 0.0, 0.0, 5.0]])
    # length: +-2/5, rms 2/5 -> +-1; lists: 2/3 both rows, rms 2/3 -> 1; others never differ
    expected = np.array([[1.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 1.0, 0.0]])
    assert style_differences(m, b) == pytest.approx(expected)
    with pytest.raises(ValueError, match="negative"):
        style_differences(-m, b)


def test_weighted_logistic_equals_repeated_rows():
    x = np.array([[1.0, 0.5], [1.0, -1.0], [1.0, 2.0]])
    y = np.array([1.0, 0.0, 0.5])
    weighted = fit_weighted_logistic(x, y, np.array([2.0, 1.0, 3.0]), 0.01)
    repeated = fit_weighted_logistic(
        np.repeat(x, [2, 1, 3], axis=0), np.repeat(y, [2, 1, 3]), None, 0.01
    )
    assert weighted == pytest.approx(repeated, abs=1e-9)


@pytest.mark.parametrize(
    ("battles", "kwargs", "match"),
    [
        ([], {}, "no battles"),
        ([Battle("m", ("win", "A>B"))], {}, "verdicts must be"),
        ([Battle("m", ())], {}, "at least one verdict"),
        ([Battle("base", ("win",))], {"baseline": "base"}, "cannot also be"),
        ([Battle("m", ("win",))], {"style_control": True}, "style control needs"),
        ([Battle("m", ("win",))], {"l2": 0.0}, "l2 must be"),
        ([Battle("m", ("win",))], {"confidence": 1.0}, "confidence"),
    ],
)
def test_invalid_inputs_raise(battles, kwargs, match):
    with pytest.raises(ValueError, match=match):
        arena_hard_scores(battles, **kwargs)
