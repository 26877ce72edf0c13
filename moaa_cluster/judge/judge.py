"""The MoA judge (paper Sec. 3.2, prompts K.2-K.4) and candidate ranking.

Pure method code: models are reached through backends (``async chat(messages, sampling)``)
handed in by the caller, so this module runs the same against vLLM engines, HTTP servers, or
a fake in unit tests.

One comparison of (A, B): criteria filtering picks 3 of 8 criteria (K.2; an invalid pick
falls back to ``DEFAULT_CRITERIA`` and is counted), every proposer judge writes a critique
(K.3), the aggregator judge reads them and gives ``[[A]]``/``[[B]]`` (K.4). A verdict that
cannot be parsed is asked for once more with decoding constrained to the two verdict
strings; it is counted either way and never replaced by a default. A single-model judge is
the same code with one proposer that is also the aggregator.
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
    import hashlib

    digest = hashlib.sha256(f"{spec.seed}:{key}:{role}".encode()).digest()
    return {**sampling, "seed": int.from_bytes(digest[:4], "little") & 0x7FFFFFFF}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _usage(counter: dict, completion) -> None:
    counter["calls"] += 1
    counter["prompt_tokens"] += completion.prompt_tokens
    counter["completion_tokens"] += completion.completion_tokens


async def compare(
    spec: JudgeSpec,
    backends: dict,
    prompt: list[dict],
    answer_a: str,
    answer_b: str,
    key: str = "",
) -> dict:
    """Judges one ordered pair. Returns the verdict and everything that led to it.

    ``key`` names the comparison (row, candidates, order) so seeded sampling repeats on rerun.
    """
    question = render_question(prompt)
    usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    criteria, criteria_text, fallback = DEFAULT_CRITERIA, None, False
    if spec.criteria_filtering:
        sel = await backends[spec.criteria_model or spec.aggregator].chat(
            _user(criteria_filter_prompt(question, answer_a, answer_b)),
            _seeded(spec, spec.sampling, key, "criteria"),
        )
        _usage(usage, sel)
        criteria_text = sel.text
        parsed = parse_criteria(sel.text)
        fallback = parsed is None
        criteria = parsed or DEFAULT_CRITERIA
    critiques = await asyncio.gather(
        *(
            backends[m].chat(
                _user(proposer_prompt(criteria, question, answer_a, answer_b)),
                _seeded(spec, spec.sampling, key, f"critique{n}"),
            )
            for n, m in enumerate(spec.proposers)
        )
    )
    for c in critiques:
        _usage(usage, c)
    agg_messages = _user(
        aggregator_prompt(criteria, question, answer_a, answer_b, [c.text for c in critiques])
    )
    agg = await backends[spec.aggregator].chat(
        agg_messages, _seeded(spec, spec.verdict_sampling, key, "verdict")
    )
    _usage(usage, agg)
    verdict = parse_verdict(agg.text)
    winner, how, recovery_text = verdict.winner, verdict.how, None
    if winner is None and spec.recover:
        followup = [
            *agg_messages,
            {"role": "assistant", "content": agg.text},
            *_user(VERDICT_FOLLOWUP),
        ]
        retry = await backends[spec.aggregator].chat(
            followup,
            {
                **_seeded(spec, spec.verdict_sampling, key, "recovery"),
                "max_tokens": 8,
                "structured_outputs": {"choice": VERDICT_CHOICES},
            },
        )
        _usage(usage, retry)
        recovery_text = retry.text
        winner = parse_verdict(retry.text).winner
    return {
        "winner": winner,  # "A", "B" or None (unresolved even after recovery)
        "parse": how,  # how the first verdict parsed: strict / lenient / both / none
        "recovered": verdict.winner is None and winner is not None,
        "criteria": list(criteria),
        "criteria_fallback": fallback,
        "criteria_text": criteria_text,
        "critiques": [{"model": c.model, "text": c.text} for c in critiques],
        "verdict_text": agg.text,
        "recovery_text": recovery_text,
        **usage,
    }


async def judge_pair(
    spec: JudgeSpec,
    backends: dict,
    prompt: list[dict],
    answers: list[str],
    i: int,
    j: int,
    key: str = "",
) -> tuple[PairResult, list[dict]]:
    """Judges candidates i and j in both orders; agreement wins, disagreement ties."""
    first, second = await asyncio.gather(
        compare(spec, backends, prompt, answers[i], answers[j], f"{key}:{i}>{j}"),
        compare(spec, backends, prompt, answers[j], answers[i], f"{key}:{j}>{i}"),
    )
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
) -> dict:
    """Ranks candidate answers with a comparison plan; picks chosen and rejected.

    Returns:
        ``chosen``/``rejected`` indices (``None`` when no strict preference), ``scores``,
        every comparison in both orders, and counts of calls, tokens and parse problems.
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
    picked = p.result()
    return {
        "chosen": picked[0] if picked else None,
        "rejected": picked[1] if picked else None,
        "scores": list(p.scores()),
        "comparisons": comparisons,
        "pairs": [{"i": r.i, "j": r.j, "outcome": str(r.outcome)} for r in results],
        "counts": summarize(comparisons),
    }


def summarize(comparisons: list[dict]) -> dict:
    """Counts over comparisons: calls, tokens, parse failures before and after recovery."""
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
