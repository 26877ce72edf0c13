"""The MoA judge's call structure on a fake backend: criteria chosen once per candidate pair.

The paper filters criteria "for each query-response pair" and K.2 takes one query with two
responses, so both orders of a pair must be judged by the same criteria, chosen by one call.
The fake selector answers differently depending on which answer it is shown as A: code that
asked once per order would give the two orders different criteria, and these tests see it.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from moaa_cluster.engines.backends import Completion
from moaa_cluster.judge.judge import JudgeSpec, judge_pair, rank
from moaa_cluster.judge.prompts import CRITERIA_FILTER, JUDGE_AGGREGATOR, render_criteria

K2_OPENING = CRITERIA_FILTER.split("\n", 1)[0]
K4_OPENING = JUDGE_AGGREGATOR.split("\n", 1)[0]
PICKS = (("Accuracy", "Depth", "Clarity"), ("Safety", "Relevance", "Robustness"))
PROMPT = [{"role": "user", "content": "Name a prime number."}]


def quality(text: str) -> int:
    return int(re.search(r"q=(\d+)", text).group(1))


class FakeJudgeModel:
    """Answers K.2, K.3 and K.4 by rule and logs every call as ``(kind, prompt text)``.

    K.2: ``PICKS[0]`` when answer A has the higher quality, else ``PICKS[1]`` (so the pick
    depends on the order shown). K.3: a fixed critique. K.4: the higher-quality answer wins,
    or ``[[A]]`` in every order when ``position_bias`` is set.
    """

    def __init__(self, name: str, position_bias: bool = False):
        self.name = name
        self.position_bias = position_bias
        self.log: list[tuple[str, str]] = []

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        text = messages[-1]["content"]
        a = quality(text.split("Assistant A response:", 1)[1])
        b = quality(text.split("Assistant B response:", 1)[1])
        if text.startswith(K2_OPENING):
            kind, pick = "criteria", PICKS[0] if a > b else PICKS[1]
            out = "Selected Criteria:\n" + "\n".join(f"{k}. {c}" for k, c in enumerate(pick, 1))
        elif text.startswith(K4_OPENING):
            kind = "verdict"
            out = "[[A]]" if self.position_bias or a > b else "[[B]]"
        else:
            kind, out = "critique", "Both answers are fine."
        self.log.append((kind, text))
        return Completion(out, 10, 2, "stop", self.name)


def spec(**kw) -> JudgeSpec:
    base = dict(name="fake", proposers=("p", "agg"), aggregator="agg", seed=0)
    return JudgeSpec(**{**base, **kw})


def backends(position_bias: bool = False) -> dict:
    return {"p": FakeJudgeModel("p"), "agg": FakeJudgeModel("agg", position_bias)}


def kinds(models: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in models.values():
        for kind, _ in m.log:
            out[kind] = out.get(kind, 0) + 1
    return out


def test_both_orders_of_a_pair_use_one_criteria_call_and_identical_criteria():
    models = backends()
    answers = ["answer q=1", "answer q=5"]
    result, (first, second) = asyncio.run(judge_pair(spec(), models, PROMPT, answers, 0, 1))
    assert kinds(models) == {"criteria": 1, "critique": 4, "verdict": 2}
    # the one pick (K.2 was shown candidate 0 as A: q=1 < q=5) rules both orders
    assert first["criteria"] == second["criteria"] == list(PICKS[1])
    assert first["criteria_text"] == second["criteria_text"]
    assert (first["criteria_call"], second["criteria_call"]) == (True, False)
    # every K.3 and K.4 prompt of both orders carries the same rendered criteria
    rendered = render_criteria(PICKS[1])
    judged = [t for m in models.values() for k, t in m.log if k != "criteria"]
    assert len(judged) == 6 and all(rendered in t for t in judged)
    assert not any(render_criteria(PICKS[0]) in t for t in judged)
    # the criteria call is counted once, in the first order: 1 + 2 critiques + 1 verdict
    assert (first["calls"], second["calls"]) == (4, 3)
    assert first["prompt_tokens"] == 40 and second["prompt_tokens"] == 30
    assert result.outcome == 1  # q=5 wins in both orders


def test_round_robin_of_five_makes_one_criteria_call_per_pair():
    models = backends()
    answers = [f"answer q={q}" for q in (3, 1, 4, 0, 2)]
    ranked = asyncio.run(rank(spec(), models, PROMPT, answers, key="row"))
    # 10 pairs: 10 criteria calls (was 20, one per order), 20 x 2 critiques, 20 verdicts
    assert kinds(models) == {"criteria": 10, "critique": 40, "verdict": 20}
    assert ranked["counts"]["calls"] == 70
    assert ranked["counts"]["comparisons"] == 20
    by_pair: dict[tuple[int, int], list[list[str]]] = {}
    for c in ranked["comparisons"]:
        by_pair.setdefault((min(c["a"], c["b"]), max(c["a"], c["b"])), []).append(c["criteria"])
    assert len(by_pair) == 10
    assert all(len(v) == 2 and v[0] == v[1] for v in by_pair.values())
    assert sum(c["criteria_call"] for c in ranked["comparisons"]) == 10
    assert (ranked["chosen"], ranked["rejected"], ranked["no_pair"]) == (2, 3, None)


def test_without_filtering_no_criteria_call_and_the_defaults_in_both_orders():
    models = backends()
    answers = ["answer q=2", "answer q=1"]
    _, (first, second) = asyncio.run(
        judge_pair(spec(criteria_filtering=False), models, PROMPT, answers, 0, 1)
    )
    assert kinds(models) == {"critique": 4, "verdict": 2}
    assert (
        first["criteria"]
        == second["criteria"]
        == [
            "Instruction adherence",
            "Accuracy",
            "Helpfulness",
        ]
    )
    assert first["criteria_call"] is second["criteria_call"] is False
    assert first["calls"] == second["calls"] == 3


def test_unparsable_pick_falls_back_in_both_orders_and_is_counted_per_order():
    class Mute(FakeJudgeModel):
        async def chat(self, messages, sampling):
            done = await super().chat(messages, sampling)
            if self.log[-1][0] == "criteria":
                return Completion("I cannot decide.", 10, 2, "stop", self.name)
            return done

    models = {"p": FakeJudgeModel("p"), "agg": Mute("agg")}
    ranked = asyncio.run(rank(spec(), models, PROMPT, ["answer q=1", "answer q=2"]))
    assert [c["criteria_fallback"] for c in ranked["comparisons"]] == [True, True]
    assert ranked["counts"]["criteria_fallback"] == 2  # comparisons judged by the defaults
    assert kinds(models)["criteria"] == 1


def test_ineligible_best_is_not_chosen_but_may_be_rejected():
    answers = [f"answer q={q}" for q in (3, 1, 4, 0, 2)]
    eligible = [True, True, False, False, True]  # the best (2) and the worst (3) are cut off
    ranked = asyncio.run(rank(spec(), backends(), PROMPT, answers, eligible=eligible))
    assert (ranked["chosen"], ranked["rejected"], ranked["no_pair"]) == (0, 3, None)


@pytest.mark.parametrize("plan", ["round_robin", "knockout"])
def test_no_pair_says_why(plan):
    # a position-biased verdict ties every pair: no preference at all
    ranked = asyncio.run(
        rank(spec(), backends(position_bias=True), PROMPT, ["answer q=1", "answer q=2"], plan)
    )
    assert (ranked["chosen"], ranked["no_pair"]) == (None, "no_preference")
    # a real preference, but only for a candidate that may not be chosen
    ranked = asyncio.run(
        rank(spec(), backends(), PROMPT, ["q=1", "q=2"], plan, eligible=[True, False])
    )
    assert (ranked["chosen"], ranked["no_pair"]) == (None, "ineligible_preferred")
    assert ranked["scores"] == [0.0, 1.0]


@pytest.mark.parametrize(("plan", "pairs"), [("round_robin", 10), ("knockout", 6)])
def test_planner_counts_one_criteria_call_per_pair(plan, pairs):
    from moaa_cluster.engines.workload import prefs_workload

    judge = spec(sampling={"max_tokens": 64}, verdict_sampling={"max_tokens": 32})
    work = prefs_workload("prefs fake", judge, "sampler", 5, 160, plan)
    calls: dict[str, float] = {}
    for phase in work.phases:
        for step in phase.steps:
            for seat in step.seats:
                calls[seat.role] = calls.get(seat.role, 0) + seat.calls * phase.repeats
    # per pair: 1 criteria call; per order: 1 critique per proposer (2) and 1 verdict
    assert calls == {"sampler": 5, "criteria": pairs, "critic": 4 * pairs, "verdict": 2 * pairs}
