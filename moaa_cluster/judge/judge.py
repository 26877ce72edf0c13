"""The MoA judge (paper Sec. 3.2, prompts K.2-K.4) and candidate ranking.

Pure method code: models are reached through backends (``async chat(messages, sampling)``)
handed in by the caller, so this module runs the same against vLLM engines, HTTP servers, or
a fake in unit tests.

A pair of candidates (i, j) is judged in both orders. Criteria filtering picks 3 of 8 criteria
(K.2; an invalid pick falls back to ``DEFAULT_CRITERIA`` and is counted) once for the pair,
and both orders judge by that same pick. The paper (Sec. 3.2) filters criteria "for each
query-response pair" (its words as issue #12 quotes them; ``PAPER.md`` keeps the prompt, not
that sentence), and the K.2 prompt it runs takes "the following user query and two AI
assistant responses": the unit is one query with an unordered pair of candidates, so one K.2
call serves both orders (not one per candidate, which K.2 cannot express, and not one per
order, which would let the two orders judge by different criteria). In each order every
proposer judge writes a critique (K.3) and the aggregator judge reads them and gives
``[[A]]``/``[[B]]`` (K.4). A verdict that cannot be parsed is asked for once more with decoding
constrained to the two verdict strings; it is counted either way and never replaced by a
default. A single-model judge is the same code with one proposer that is also the aggregator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from moaa_cluster.judge.parse import parse_criteria, parse_verdict
from moaa_cluster.judge.prompts import (
    DEFAULT_CRITERIA,
    VERDICT_FOLLOWUP,
    aggregator_prompt,
    criteria_filter_prompt,
    proposer_prompt,
    render_question,
)
from moaa_cluster.judge.ranking import PairResult, combine_orders, make_plan
from moaa_cluster.seeds import derive_seed

VERDICT_CHOICES = ["[[A]]", "[[B]]"]


@dataclass(frozen=True)
class JudgeSpec:
    """Who judges and how (from ``conf/judge/*.yaml``).

    Attributes:
        proposers: Model keys of the judges that write critiques.
        aggregator: Model key of the meta-evaluator that gives the verdict.
        criteria_model: Model key that selects criteria (default: the aggregator).
        criteria_filtering: Off: every comparison uses ``DEFAULT_CRITERIA``.
        sampling: Sampling for criteria selection and critiques.
        verdict_sampling: Sampling for the aggregator's verdict.
        recover: Ask again, constrained to ``[[A]]``/``[[B]]``, when a verdict does not parse.
    """

    name: str
    proposers: tuple[str, ...]
    aggregator: str
    criteria_model: str | None = None
    criteria_filtering: bool = True
    sampling: dict = field(default_factory=dict, hash=False, compare=False)
    verdict_sampling: dict = field(default_factory=dict, hash=False, compare=False)
    recover: bool = True
    seed: int | None = None  # per-call seeds derive from it and the comparison (reruns repeat)

    @property
    def models(self) -> list[str]:
        keys = [*self.proposers, self.aggregator, self.criteria_model or self.aggregator]
        return list(dict.fromkeys(keys))

    def single(self, model: str) -> JudgeSpec:
        """The single-model judge on ``model``: same prompts, no cross-model aggregation."""
        return JudgeSpec(
            name=f"single:{model}",
            proposers=(model,),
            aggregator=model,
            criteria_model=model,
            criteria_filtering=self.criteria_filtering,
            sampling=self.sampling,
            verdict_sampling=self.verdict_sampling,
            recover=self.recover,
            seed=self.seed,
        )


def _seeded(spec: JudgeSpec, sampling: dict, key: str, role: str) -> dict:
    if spec.seed is None or sampling.get("seed") is not None:
        return sampling
    return {**sampling, "seed": derive_seed(spec.seed, key, role)}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _usage(counter: dict, completion) -> None:
    counter["calls"] += 1
    counter["prompt_tokens"] += completion.prompt_tokens
    counter["completion_tokens"] += completion.completion_tokens


@dataclass(frozen=True)
class CriteriaChoice:
    """The criteria one pair of candidates is judged by, and what choosing them cost.

    Attributes:
        criteria: Canonical criterion names (three, or ``DEFAULT_CRITERIA``).
        text: The selector's raw K.2 answer; None when filtering is off.
        fallback: The answer did not parse into three criteria, so the defaults are used.
        calls: Model calls spent choosing (0 or 1).
        prompt_tokens: Prompt tokens of that call.
        completion_tokens: Generated tokens of that call.
    """

    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    text: str | None = None
    fallback: bool = False
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def select_criteria(
    spec: JudgeSpec, backends: dict, question: str, answer_a: str, answer_b: str, key: str = ""
) -> CriteriaChoice:
    """Runs K.2 once for a query and two responses; ``DEFAULT_CRITERIA`` when filtering is off.

    ``key`` names the pair so seeded sampling repeats on rerun.
    """
    if not spec.criteria_filtering:
        return CriteriaChoice()
    sel = await backends[spec.criteria_model or spec.aggregator].chat(
        _user(criteria_filter_prompt(question, answer_a, answer_b)),
        _seeded(spec, spec.sampling, key, "criteria"),
    )
    parsed = parse_criteria(sel.text)
    return CriteriaChoice(
        criteria=tuple(parsed or DEFAULT_CRITERIA),
        text=sel.text,
        fallback=parsed is None,
        calls=1,
        prompt_tokens=sel.prompt_tokens,
        completion_tokens=sel.completion_tokens,
    )


async def compare(
    spec: JudgeSpec,
    backends: dict,
    prompt: list[dict],
    answer_a: str,
    answer_b: str,
    key: str = "",
    choice: CriteriaChoice | None = None,
) -> dict:
    """Judges one ordered pair. Returns the verdict and everything that led to it.

    Args:
        spec: Who judges and how.
        backends: Model key -> backend with ``async chat(messages, sampling)``.
        prompt: The conversation the answers respond to.
        answer_a: The response shown as assistant A.
        answer_b: The response shown as assistant B.
        key: Names the comparison (row, candidates, order) so seeded sampling repeats.
        choice: The pair's criteria, chosen by the caller and shared with the other order
            (its cost is not counted here); None: choose them here and count the call.
    """
    question = render_question(prompt)
    usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    own_choice = choice is None
    if own_choice:
        choice = await select_criteria(spec, backends, question, answer_a, answer_b, key)
        usage = {k: getattr(choice, k) for k in usage}
    critiques = await _critiques(spec, backends, choice.criteria, question, answer_a, answer_b, key)
    for c in critiques:
        _usage(usage, c)
    agg_messages = _user(
        aggregator_prompt(
            choice.criteria, question, answer_a, answer_b, [c.text for c in critiques]
        )
    )
    agg = await backends[spec.aggregator].chat(
        agg_messages, _seeded(spec, spec.verdict_sampling, key, "verdict")
    )
    _usage(usage, agg)
    verdict = parse_verdict(agg.text)
    winner, recovery_text = verdict.winner, None
    if winner is None and spec.recover:
        recovery_text = await _recover(spec, backends, agg_messages, agg.text, key, usage)
        winner = parse_verdict(recovery_text).winner
    return {
        "winner": winner,  # "A", "B" or None (unresolved even after recovery)
        "parse": verdict.how,  # how the first verdict parsed: strict / lenient / both / none
        "recovered": verdict.winner is None and winner is not None,
        "criteria": list(choice.criteria),
        "criteria_fallback": choice.fallback,
        "criteria_text": choice.text,
        # True: this comparison's calls and tokens include the criteria call (made once per
        # pair and counted once, in the first order); False: it reused the pair's criteria.
        "criteria_call": own_choice and choice.calls > 0,
        "critiques": [{"model": c.model, "text": c.text} for c in critiques],
        "verdict_text": agg.text,
        "recovery_text": recovery_text,
        **usage,
    }


async def _critiques(
    spec: JudgeSpec,
    backends: dict,
    criteria: tuple[str, ...],
    question: str,
    answer_a: str,
    answer_b: str,
    key: str,
) -> list:
    """Every proposer judge's critique of one ordered pair (K.3), called concurrently."""
    return await asyncio.gather(
        *(
            backends[m].chat(
                _user(proposer_prompt(criteria, question, answer_a, answer_b)),
                _seeded(spec, spec.sampling, key, f"critique{n}"),
            )
            for n, m in enumerate(spec.proposers)
        )
    )


async def _recover(
    spec: JudgeSpec, backends: dict, agg_messages: list[dict], first: str, key: str, usage: dict
) -> str:
    """Asks once more for a verdict, decoding constrained to ``[[A]]``/``[[B]]``."""
    followup = [*agg_messages, {"role": "assistant", "content": first}, *_user(VERDICT_FOLLOWUP)]
    retry = await backends[spec.aggregator].chat(
        followup,
        {
            **_seeded(spec, spec.verdict_sampling, key, "recovery"),
            "max_tokens": 8,
            "structured_outputs": {"choice": VERDICT_CHOICES},
        },
    )
    _usage(usage, retry)
    return retry.text


async def judge_pair(
    spec: JudgeSpec,
    backends: dict,
    prompt: list[dict],
    answers: list[str],
    i: int,
    j: int,
    key: str = "",
) -> tuple[PairResult, list[dict]]:
    """Judges candidates i and j in both orders; agreement wins, disagreement ties.

    The criteria are chosen once for the pair (K.2 shown i as A, j as B) and both orders
    judge by that same choice, so the swapped order differs only in the order of the
    answers. The criteria call is counted in the first order's record.
    """
    question = render_question(prompt)
    first_key, second_key = f"{key}:{i}>{j}", f"{key}:{j}>{i}"
    choice = await select_criteria(spec, backends, question, answers[i], answers[j], first_key)
    first, second = await asyncio.gather(
        compare(spec, backends, prompt, answers[i], answers[j], first_key, choice),
        compare(spec, backends, prompt, answers[j], answers[i], second_key, choice),
    )
    for k in ("calls", "prompt_tokens", "completion_tokens"):
        first[k] += getattr(choice, k)
    first["criteria_call"] = choice.calls > 0
    result = combine_orders(i, j, first["winner"], second["winner"])
    first.update(a=i, b=j)
    second.update(a=j, b=i)
    return result, [first, second]


async def rank(
    spec: JudgeSpec,
    backends: dict,
    prompt: list[dict],
    answers: list[str],
    plan: str = "round_robin",
    key: str = "",
    eligible: list[bool] | None = None,
) -> dict:
    """Ranks candidate answers with a comparison plan; picks chosen and rejected.

    Args:
        spec: Who judges and how.
        backends: Model key -> backend.
        prompt: The conversation the answers respond to.
        answers: The candidates.
        plan: ``round_robin`` (the paper's) or ``knockout``.
        key: Names the row so seeded sampling repeats on rerun.
        eligible: Per candidate, whether it may be chosen (every candidate is judged and may
            be rejected); None: all may.

    Returns:
        ``chosen``/``rejected`` indices (``None`` when there is no pair), ``no_pair``: why
        not (``"no_preference"``: no strict preference at all; ``"ineligible_preferred"``:
        only ineligible candidates score above the worst), ``scores``, every comparison in
        both orders, and counts of calls, tokens and parse problems.
    """
    p = make_plan(plan, len(answers))
    comparisons: list[dict] = []
    results: list[PairResult] = []
    while pairs := p.next_pairs():
        done = await asyncio.gather(
            *(judge_pair(spec, backends, prompt, answers, i, j, key) for i, j in pairs)
        )
        batch = [r for r, _ in done]
        p.record(batch)
        results.extend(batch)
        for _, cmp in done:
            comparisons.extend(cmp)
    unrestricted = p.result()
    picked = unrestricted if eligible is None else p.result(eligible)
    no_pair = None
    if picked is None:
        no_pair = "no_preference" if unrestricted is None else "ineligible_preferred"
    return {
        "chosen": picked[0] if picked else None,
        "rejected": picked[1] if picked else None,
        "no_pair": no_pair,
        "scores": list(p.scores()),
        "comparisons": comparisons,
        "pairs": [{"i": r.i, "j": r.j, "outcome": str(r.outcome)} for r in results],
        "counts": summarize(comparisons),
    }


# the counters of :func:`summarize`, in its order; prefs and eval shards keep each one in a
# ``judge_<name>`` column
COUNT_FIELDS = (
    "comparisons",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "verdict_unparsed",
    "verdict_recovered",
    "verdict_unresolved",
    "criteria_fallback",
)


def summarize(comparisons: list[dict]) -> dict:
    """Counts over comparisons: calls, tokens, parse failures before and after recovery.

    ``calls`` and the token counts include each pair's one criteria call (recorded in its
    first order); ``criteria_fallback`` counts comparisons judged by the default criteria,
    so a pair whose K.2 answer did not parse counts twice, once per order.
    """
    return {
        "comparisons": len(comparisons),
        "calls": sum(c["calls"] for c in comparisons),
        "prompt_tokens": sum(c["prompt_tokens"] for c in comparisons),
        "completion_tokens": sum(c["completion_tokens"] for c in comparisons),
        "verdict_unparsed": sum(c["parse"] in ("none", "both") for c in comparisons),
        "verdict_recovered": sum(c["recovered"] for c in comparisons),
        "verdict_unresolved": sum(c["winner"] is None for c in comparisons),
        "criteria_fallback": sum(bool(c["criteria_fallback"]) for c in comparisons),
    }
