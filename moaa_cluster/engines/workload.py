"""What a run asks of its engines: steps of dependent calls, per instruction (for the planner).

A *step* holds calls that need the previous step's answers (a mixture layer; the judge's
criteria, critiques, verdict); its seats are independent of each other. A *phase* runs its
steps in order, ``repeats`` times (conversation turns, knockout rounds). Pure: built from
``moa.mixture.Mixture`` / ``judge.judge.JudgeSpec`` objects by duck typing, no imports above
``engines``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moaa_cluster.errors import ConfigError

COMPARISON_PLANS = ("round_robin", "knockout")


@dataclass(frozen=True)
class Seat:
    """One role of a model in a step, with its expected calls per instruction and repeat."""

    model: str
    role: str
    calls: float
    tokens_per_call: float


@dataclass(frozen=True)
class Step:
    """Calls that depend on the previous step's answers (a mixture layer, a judge role)."""

    label: str
    seats: tuple[Seat, ...]

    @property
    def models(self) -> list[str]:
        """Distinct model keys in seat order."""
        return list(dict.fromkeys(s.model for s in self.seats))


@dataclass(frozen=True)
class Phase:
    """Steps run in order, the whole sequence ``repeats`` times (turns, knockout rounds)."""

    steps: tuple[Step, ...]
    repeats: int = 1
    unit: str = "turn"


@dataclass(frozen=True)
class Workload:
    """What one run asks of its engines, per instruction."""

    name: str
    phases: tuple[Phase, ...]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(m for p in self.phases for s in p.steps for m in s.models))

    def roles(self) -> dict[str, list[str]]:
        """``{model key: [role, ...]}``: more than one role means one engine, several jobs."""
        out: dict[str, list[str]] = {}
        for phase in self.phases:
            for step in phase.steps:
                for seat in step.seats:
                    if seat.role not in out.setdefault(seat.model, []):
                        out[seat.model].append(seat.role)
        return out


def _max_tokens(sampling: Mapping, where: str) -> int:
    value = sampling.get("max_tokens")
    if not value:
        raise ConfigError(f"{where}: sampling has no max_tokens; the estimate needs it")
    return int(value)


def synth_workload(
    name: str,
    mixture,
    defaults: Mapping,
    turns: int = 1,
    output_tokens: float | None = None,
) -> Workload:
    """Stage 1: every seat of every layer answers once per turn.

    Args:
        name: Shown in the plan (e.g. ``synth paper_stage1``).
        mixture: A ``moa.mixture.Mixture`` (layers of agents with ``model`` and ``sampling``).
        defaults: The mixture's sampling defaults; a seat's ``sampling`` overrides them.
        turns: User turns per conversation; each turn runs every layer again.
        output_tokens: Mean generated tokens per call; None takes each seat's ``max_tokens``
            (an upper bound).
    """
    if turns < 1:
        raise ConfigError(f"turns must be >= 1, got {turns}")
    steps = []
    last = len(mixture.layers) - 1
    for i, layer in enumerate(mixture.layers):
        role = f"L{i + 1} aggregator" if i == last else f"L{i + 1} proposer"
        seats = tuple(
            Seat(
                model=agent.model,
                role=role,
                calls=1.0,
                tokens_per_call=float(
                    output_tokens
                    or _max_tokens({**defaults, **agent.sampling}, f"{name} layer {i + 1}")
                ),
            )
            for agent in layer
        )
        steps.append(Step(label=f"layer {i + 1}", seats=seats))
    return Workload(name=name, phases=(Phase(steps=tuple(steps), repeats=turns, unit="turn"),))


def comparison_rounds(plan: str, n: int) -> list[int]:
    """Pairs judged in each sequential round of a comparison plan over ``n`` candidates.

    ``round_robin`` (the paper) judges all n(n-1)/2 pairs in one round; ``knockout`` (see
    ``judge.ranking.Knockout``) splits the field in round 1 and then runs a winners and a
    losers bracket side by side, odd members getting a bye; the counts do not depend on who
    wins. Each pair is judged in both orders.
    """
    if plan not in COMPARISON_PLANS:
        raise ConfigError(f"unknown comparison plan {plan!r}; expected one of {COMPARISON_PLANS}")
    if n < 2:
        return []
    if plan == "round_robin":
        return [n * (n - 1) // 2]
    rounds = [n // 2]
    winners = losers = (n + 1) // 2
    while winners > 1 or losers > 1:
        rounds.append(winners // 2 + losers // 2)
        winners, losers = (winners + 1) // 2, (losers + 1) // 2
    return rounds


def prefs_workload(
    name: str,
    judge,
    sampler: str,
    num_candidates: int,
    sampler_tokens: int,
    plan: str = "round_robin",
    output_tokens: float | None = None,
) -> Workload:
    """Stage 2: the sampler writes candidates, then the MoA judge compares them.

    Every pair makes one criteria call (when filtering; by ``criteria_model`` or the
    aggregator), shared by its two orders: the paper filters criteria per query-response
    pair (``judge.judge``). Every ordered comparison (each pair in both orders) then makes
    one critique per proposer and one verdict by the aggregator. Verdict-recovery calls (a
    few tokens, rare) are not counted.

    Args:
        name: Shown in the plan (e.g. ``prefs paper_stage2``).
        judge: A ``judge.judge.JudgeSpec`` (proposers, aggregator, criteria_model, sampling).
        sampler: Model key of the model whose candidates are ranked.
        num_candidates: Candidates per instruction (the paper: 5).
        sampler_tokens: ``max_tokens`` of the candidate sampling.
        plan: Comparison plan, ``round_robin`` or ``knockout``.
        output_tokens: Mean generated tokens per call; None takes ``max_tokens`` (upper bound).
    """
    rounds = comparison_rounds(plan, num_candidates)
    sample = Step(
        "sample",
        (
            Seat(
                sampler,
                "sampler",
                float(num_candidates),
                float(output_tokens or sampler_tokens),
            ),
        ),
    )
    phases = [Phase(steps=(sample,), repeats=1, unit="pass")]
    if rounds:
        pairs_per_round = sum(rounds) / len(rounds)
        per_round = 2.0 * pairs_per_round  # ordered comparisons per round
        critique = float(output_tokens or _max_tokens(judge.sampling, f"judge {judge.name}"))
        verdict = float(
            output_tokens or _max_tokens(judge.verdict_sampling, f"judge {judge.name} verdict")
        )
        steps = []
        if judge.criteria_filtering:
            chooser = judge.criteria_model or judge.aggregator
            seat = Seat(chooser, "criteria", pairs_per_round, critique)  # one per pair
            steps.append(Step("criteria", (seat,)))
        steps.append(
            Step(
                "critiques", tuple(Seat(m, "critic", per_round, critique) for m in judge.proposers)
            )
        )
        steps.append(Step("verdict", (Seat(judge.aggregator, "verdict", per_round, verdict),)))
        phases.append(Phase(steps=tuple(steps), repeats=len(rounds), unit="round"))
    return Workload(name=name, phases=tuple(phases))
