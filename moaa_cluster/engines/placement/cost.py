"""What a run costs: generated tokens per engine, the throughput table, and the stages' times.

The tokens come from the run's :class:`~moaa_cluster.engines.workload.Workload`, the tokens/s
figures from ``engines/throughput.py``; the stages (which engines are resident together, in
which order) from the plan (``engines.placement.planner``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from moaa_cluster.engines.placement.fit import EnginePlan
from moaa_cluster.engines.placement.inventory import Inventory, PlanSettings
from moaa_cluster.engines.placement.waves import Wave
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.engines.throughput import Rate, ThroughputTable
from moaa_cluster.engines.workload import Workload

Cells = dict[tuple[int, int], dict[str, tuple[float, float]]]


@dataclass(frozen=True)
class Costing:
    """What an estimate is asked for besides the placement.

    Attributes:
        table: Throughput figures (``conf/throughput``).
        rows: Instructions to estimate for.
        tokens_note: How generated tokens were counted, shown with the estimate.
        calls_per_cpu: Model calls/s the orchestration (reading, Ray Data, writing) sustains
            per worker CPU, measured (``benchmarks/orchestration.py``); None: not said.
    """

    table: ThroughputTable
    rows: int
    tokens_note: str = ""
    calls_per_cpu: float | None = None


@dataclass(frozen=True)
class EngineCost:
    """One engine's share of a run: calls, generated tokens, throughput and busy time."""

    key: str
    name: str
    calls: float
    output_tokens: float
    tokens_per_s: float | None
    source: str
    busy_hours: float | None
    gpus: int


@dataclass(frozen=True)
class Estimate:
    """Time and GPU-hours for ``rows`` instructions.

    Attributes:
        wall_hours: Generation plus engine loads, end to end.
        load_hours: Of which engine loads (layer-by-layer plans reload engines).
        gpu_hours: GPUs the plan's stages hold x their durations.
        allocated_gpu_hours: Every GPU of the inventory x wall time (what an allocation costs).
        missing: Engines without a throughput figure (then no totals).
    """

    rows: int
    engines: tuple[EngineCost, ...]
    wall_hours: float | None
    load_hours: float | None
    gpu_hours: float | None
    allocated_gpu_hours: float | None
    throughput: str
    tokens_note: str
    missing: tuple[str, ...] = ()
    calls_per_cpu: float | None = None

    @property
    def calls_per_s(self) -> float | None:
        """Model calls/s the engines take at their figures: every call over the time spent
        generating (the wall time without engine loads)."""
        if self.wall_hours is None or self.load_hours is None:
            return None
        seconds = (self.wall_hours - self.load_hours) * 3600
        return sum(c.calls for c in self.engines) / seconds if seconds > 0 else None


def _step_tokens(workload: Workload) -> dict[tuple[int, int], dict[str, tuple[float, float]]]:
    """``{(phase, step): {model: (calls, tokens)}}`` per instruction and repeat."""
    out: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
    for p, phase in enumerate(workload.phases):
        for s, step in enumerate(phase.steps):
            cell = out.setdefault((p, s), {})
            for seat in step.seats:
                calls, tokens = cell.get(seat.model, (0.0, 0.0))
                cell[seat.model] = (calls + seat.calls, tokens + seat.calls * seat.tokens_per_call)
    return out


def estimate(
    workload: Workload,
    plan_engines: Mapping[str, EnginePlan],
    stages: Sequence[Wave],
    specs: Mapping[str, ModelSpec],
    inv: Inventory,
    st: PlanSettings,
    costing: Costing,
) -> Estimate:
    """GPU-hours for ``costing.rows`` instructions from expected tokens and the throughput table.

    An engine's busy time is its generated tokens / (its figure x replicas). Within a stage
    engines run side by side, so the stage lasts as long as its slowest GPU engine; CPU
    engines on one node share its cores, so their times add up. Stages run one after another,
    each repeat of a phase (turn, knockout round) again, and a stage loads the engines the
    previous stage did not have (``engine_start_s`` + weights / ``load_gb_per_s``).
    """
    cells = _step_tokens(workload)
    costs, rates, missing = _engine_costs(workload, plan_engines, specs, inv, costing, cells)
    base = dict(
        rows=costing.rows,
        engines=tuple(costs),
        throughput=costing.table.name,
        tokens_note=costing.tokens_note,
        missing=tuple(missing),
        calls_per_cpu=costing.calls_per_cpu,
    )
    if missing:
        return Estimate(
            wall_hours=None, load_hours=None, gpu_hours=None, allocated_gpu_hours=None, **base
        )
    clock = _Clock(workload, plan_engines, cells, rates, inv, st, costing.rows)
    wall, loads, held = clock.run(stages)
    return Estimate(
        wall_hours=wall / 3600,
        load_hours=loads / 3600,
        gpu_hours=None if inv.on_cpu else held / 3600,
        allocated_gpu_hours=None if inv.on_cpu else wall * inv.gpus / 3600,
        **base,
    )


def _engine_costs(
    workload: Workload,
    plan_engines: Mapping[str, EnginePlan],
    specs: Mapping[str, ModelSpec],
    inv: Inventory,
    costing: Costing,
    cells: Cells,
) -> tuple[list[EngineCost], dict[str, Rate | None], list[str]]:
    """Each engine's calls, tokens and busy time over the run, its rate, and the engines
    without a throughput figure."""
    rows = costing.rows
    totals: dict[str, list[float]] = {}
    for (p, _), cell in cells.items():
        for model, (calls, tokens) in cell.items():
            acc = totals.setdefault(model, [0.0, 0.0])
            acc[0] += calls * workload.phases[p].repeats * rows
            acc[1] += tokens * workload.phases[p].repeats * rows
    rates: dict[str, Rate | None] = {}
    costs, missing = [], []
    for key in workload.models:
        e = plan_engines[key]
        calls, tokens = totals.get(key, (0.0, 0.0))
        rate = None if e.external else costing.table.lookup(inv.device, key, specs[key], e.tp)
        rates[key] = rate
        if rate is None and not e.external:
            missing.append(e.name)
        tps = rate.tokens_per_s * e.replicas if rate else None
        costs.append(
            EngineCost(
                key=key,
                name=e.name,
                calls=calls,
                output_tokens=tokens,
                tokens_per_s=tps,
                source="external server (not counted)"
                if e.external
                else (rate.source if rate else "no figure"),
                busy_hours=tokens / tps / 3600 if tps else None,
                gpus=e.gpus,
            )
        )
    return costs, rates, missing


@dataclass(frozen=True)
class _Clock:
    """Seconds of one run, stage by stage: generation at the engines' rates, and loads."""

    workload: Workload
    plan_engines: Mapping[str, EnginePlan]
    cells: Cells
    rates: Mapping[str, Rate | None]
    inv: Inventory
    st: PlanSettings
    rows: int

    def busy(self, stage: Wave) -> float:
        """Seconds of generation for one pass of the stage over all rows."""
        workload, cells, rates = self.workload, self.cells, self.rates
        seconds = {}
        for key in stage.engines:
            tokens = sum(
                cell.get(key, (0.0, 0.0))[1]
                * (workload.phases[p].repeats if stage.phase is None else 1)
                for (p, s), cell in cells.items()
                if stage.phase is None or (p == stage.phase and s in stage.steps)
            )
            seconds[key] = (
                self.rows * tokens / (rates[key].tokens_per_s * self.plan_engines[key].replicas)
            )
        if not seconds:
            return 0.0
        if self.inv.on_cpu:  # engines on one node share its cores
            return max(sum(seconds.get(k, 0.0) for k in set(node)) for node in stage.nodes)
        return max(seconds.values())

    def load_s(self, keys: Iterable[str]) -> float:
        """Seconds to load ``keys``' engines side by side."""
        st = self.st
        keys = [k for k in keys if not self.plan_engines[k].external]
        if not keys:
            return 0.0
        return max(
            st.engine_start_s + self.plan_engines[k].weights_gb / st.load_gb_per_s for k in keys
        )

    def sequence(self, stages: Sequence[Wave]) -> list[Wave]:
        """The stages in the order a run goes through them, each phase's repeated."""
        if len(stages) == 1 and stages[0].phase is None:
            return list(stages)
        sequence: list[Wave] = []
        for p, phase in enumerate(self.workload.phases):
            ordered = [s for s in stages if s.phase == p]
            sequence += ordered * phase.repeats
        return sequence

    def run(self, stages: Sequence[Wave]) -> tuple[float, float, float]:
        """``(wall, of which loads, GPU-seconds held)`` over the run."""
        wall = loads = held = 0.0
        resident: set[str] = set()
        for stage in self.sequence(stages):
            gen = self.busy(stage)
            new = [k for k in stage.engines if k not in resident]
            load = self.load_s(new)
            resident = set(stage.engines)
            wall += gen + load
            loads += load
            held += (gen + load) * stage.gpus
        return wall, loads, held
