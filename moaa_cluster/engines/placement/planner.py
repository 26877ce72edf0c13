"""The plan: every engine sized, the stages they are resident in, and what the run costs.

:func:`plan` is what ``moaa plan`` prints (``engines.placement.report``); :func:`check_fits`
is the pipelines' pre-flight check on the engines they are about to start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from moaa_cluster.engines.placement.cost import Costing, Estimate, estimate
from moaa_cluster.engines.placement.fit import EnginePlan, fill_from_checkpoint, size_engine
from moaa_cluster.engines.placement.inventory import Inventory, PlanSettings
from moaa_cluster.engines.placement.waves import (
    Wave,
    demand,
    engine_size,
    first_fit_waves,
    make_wave,
    node_capacity,
)
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.engines.workload import Phase, Seat, Step, Workload
from moaa_cluster.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """Where every engine goes, in which stages, and (optionally) what the run costs."""

    workload: str
    inventory: Inventory
    settings: PlanSettings
    mode: str
    reason: str
    engines: dict[str, EnginePlan]
    stages: tuple[Wave, ...]
    repeats: tuple[tuple[int, str], ...]
    loads_per_run: int
    notes: tuple[str, ...] = ()
    estimate: Estimate | None = None
    # resident plans with idle GPUs: replicas per engine that would use them, and the estimate
    replica_hint: dict[str, int] = field(default_factory=dict)
    replica_estimate: Estimate | None = None

    @property
    def peak_gpus(self) -> int:
        return max((s.gpus for s in self.stages), default=0)

    def to_dict(self) -> dict:
        """Plain JSON-ready form (``moaa plan format=json``)."""
        out = asdict(self)
        out["engines"] = {
            k: {**asdict(e), "need_gb": e.need_gb, "gpus": e.gpus} for k, e in self.engines.items()
        }
        out["peak_gpus"] = self.peak_gpus
        return out


def _one_engine_per_served_model(
    workload: Workload, specs: Mapping[str, ModelSpec]
) -> tuple[Workload, list[str]]:
    """Maps model keys that name the same served model onto one key.

    The engines are deployed per served model name (``serve_llm.app_name``), so two keys for
    one model (the embedded sampler and judge both SmolLM2) share one engine.
    """
    canonical: dict[str, str] = {}
    alias: dict[str, str] = {}
    notes = []
    for key in workload.models:
        spec = specs[key]
        ident = spec.name if spec.backend == "vllm" else f"{spec.name}@{spec.base_url}"
        first = canonical.setdefault(ident, key)
        alias[key] = first
        if first != key:
            differs = replace(specs[first], name=spec.name) != spec
            notes.append(
                f"model keys {first} and {key} are both {spec.name}: one engine"
                + (
                    " (their configs differ; the engine is started from one of them)"
                    if differs
                    else ""
                )
            )
    if all(k == v for k, v in alias.items()):
        return workload, notes
    phases = tuple(
        replace(
            phase,
            steps=tuple(
                replace(step, seats=tuple(replace(x, model=alias[x.model]) for x in step.seats))
                for step in phase.steps
            ),
        )
        for phase in workload.phases
    )
    return replace(workload, phases=phases), notes


def _layered(
    workload: Workload, engines: Mapping[str, EnginePlan], inv: Inventory, waves: bool
) -> tuple[list[Wave], list[str], str | None]:
    """One stage per step, a step split into waves when allowed and needed.

    Returns:
        ``(stages, why each split step was split, None)``, or ``([], [], why)`` on failure.
    """
    stages: list[Wave] = []
    split: list[str] = []
    for p, phase in enumerate(workload.phases):
        for s, step in enumerate(phase.steps):
            stage = make_wave(step.label, step.models, engines, inv, p, [s])
            if stage is not None:
                stages.append(stage)
                continue
            need = f"{step.label} needs {demand(step.models, engines, inv)}"
            if not waves:
                return [], [], need
            prev = stages[-1].engines if stages else ()
            nxt = phase.steps[s + 1].models if s + 1 < len(phase.steps) else ()
            split.append(need)
            groups = first_fit_waves(step.models, node_capacity(engines, inv), prev, nxt)
            for n, keys in enumerate(groups):
                tag = f"{step.label} wave {n + 1}/{len(groups)}" if len(groups) > 1 else step.label
                stages.append(make_wave(tag, keys, engines, inv, p, [s]))
    return stages, split, None


def _schedule_loads(stages: Sequence[Wave], workload: Workload) -> dict[str, int]:
    """How often each engine is loaded in one run; consecutive stages keep shared engines."""
    if len(stages) == 1 and stages[0].phase is None:
        return dict.fromkeys(stages[0].engines, 1)
    count: dict[str, int] = {}
    resident: set[str] = set()
    for p, phase in enumerate(workload.phases):
        for _ in range(phase.repeats):
            for stage in (s for s in stages if s.phase == p):
                for key in set(stage.engines) - resident:
                    count[key] = count.get(key, 0) + 1
                resident = set(stage.engines)
    return count


def plan(
    workload: Workload,
    specs: Mapping[str, ModelSpec],
    inventory: Inventory,
    settings: PlanSettings | None = None,
    costing: Costing | None = None,
    require_size: bool = True,
) -> Plan:
    """Sizes every engine of ``workload`` and places them on ``inventory``.

    Args:
        workload: What the run asks (``synth_workload`` / ``prefs_workload``).
        specs: ``{model key: ModelSpec}`` for every model key the workload uses.
        inventory: The hardware.
        settings: Memory model and placement policy (defaults: ``PlanSettings()``).
        costing: Throughput figures and rows; with rows the plan carries an estimate.
        require_size: Refuse specs without ``params_b`` (off: their weights count as 0).

    Returns:
        The plan.

    Raises:
        ConfigError: A model is unknown or cannot fit, or the strategy cannot place the
            engines; the message names the model or step and the numbers.
    """
    st = settings or PlanSettings()
    inv = inventory
    missing = [m for m in workload.models if m not in specs]
    if missing:
        raise ConfigError(f"{workload.name}: no model spec for {missing}")
    workload, notes = _one_engine_per_served_model(workload, specs)
    roles = workload.roles()
    engines = {
        k: size_engine(k, specs[k], inv, st, roles.get(k, ()), require_size)
        for k in workload.models
    }
    notes += _sizing_notes(engines, specs)
    mode, reason, stages = _place(workload, engines, inv, st)
    loads = _schedule_loads(stages, workload)
    notes += _role_notes(engines, loads)
    out = Plan(
        workload=workload.name,
        inventory=inv,
        settings=st,
        mode=mode,
        reason=reason,
        engines=engines,
        stages=tuple(stages),
        repeats=tuple((p.repeats, p.unit) for p in workload.phases),
        loads_per_run=sum(loads.values()),
        notes=tuple(notes),
    )
    if costing is not None and costing.rows:
        est = estimate(workload, engines, stages, specs, inv, st, costing)
        out = replace(out, estimate=est)
        if mode == "resident" and not inv.on_cpu and est.wall_hours:
            hint, hinted = _spare_replicas(out, workload, specs, costing)
            out = replace(out, replica_hint=hint, replica_estimate=hinted)
    return out


def _sizing_notes(engines: Mapping[str, EnginePlan], specs: Mapping[str, ModelSpec]) -> list[str]:
    """What the sizing could not know, and TPs that differ from the model configs'."""
    notes = []
    for key, e in engines.items():
        if e.external:
            continue
        if specs[key].params_b is None:
            notes.append(f"{e.name}: weights not sized (set params_b in its model config)")
        if e.kv_gb is None:
            notes.append(
                f"{e.name}: KV cache not sized (set num_hidden_layers, num_key_value_heads, "
                f"head_dim in its model config)"
            )
        if e.tp != e.configured_tp:
            notes.append(
                f"{e.name}: planned at TP {e.tp} but its model config says "
                f"{e.configured_tp}, which the pipelines start; set tensor_parallel_size: {e.tp}"
            )
    return notes


def _place(
    workload: Workload, engines: Mapping[str, EnginePlan], inv: Inventory, st: PlanSettings
) -> tuple[str, str, list[Wave]]:
    """``(mode, reason, stages)``: the first placement ``st.strategy`` allows that fits.

    Raises:
        ConfigError: None fits; says what each tried placement needs.
    """
    placed = [k for k in workload.models if not engines[k].external]
    tried: list[str] = []

    def allowed(mode: str) -> bool:
        return st.strategy in ("auto", mode)

    if allowed("resident"):
        stage = make_wave("all steps", placed, engines, inv, None, ())
        if stage is not None:
            used = (
                f"{stage.memory_gb:.1f} GiB of RAM"
                if inv.on_cpu
                else f"{stage.gpus} of {inv.gpus} GPUs"
            )
            return "resident", f"all {len(placed)} engines fit at once ({used})", [stage]
        tried.append(f"all engines at once need {demand(placed, engines, inv)}")
    if allowed("layers") or allowed("waves"):
        stages, split, failed = _layered(workload, engines, inv, waves=allowed("waves"))
        if not failed:
            return "waves" if split else "layers", "; ".join(tried + split), stages
        tried.append(failed)
    hint = {
        "resident": "; strategy=auto plans layer by layer instead",
        "layers": "; strategy=auto (or waves) splits a step into waves",
    }.get(st.strategy, "")
    raise ConfigError(
        f"{workload.name}: cannot place on {inv.describe()}: {'; '.join(tried)}{hint}"
    )


def _role_notes(engines: Mapping[str, EnginePlan], loads: Mapping[str, int]) -> list[str]:
    """Engines that serve several roles, and how often each is loaded per run."""
    notes = []
    for key, e in engines.items():
        if len(e.roles) > 1:
            times = loads.get(key, 0)
            how = "loaded once" if times == 1 else f"loaded {times} times per run"
            notes.append(f"{e.name} serves {', '.join(e.roles)}: one engine, {how}")
    return notes


def _spare_replicas(
    p: Plan, workload: Workload, specs: Mapping[str, ModelSpec], costing: Costing
) -> tuple[dict[str, int], Estimate | None]:
    """Greedy: give the slowest engine one more replica while the engines still pack.

    Returns ``({key: replicas}`` for the engines that changed, their estimate``)``, or
    ``({}, None)`` when no spare GPU shortens the run.
    """
    engines, inv, st = p.engines, p.inventory, p.settings
    placed = [k for k in workload.models if not engines[k].external]
    current, best = dict(engines), p.estimate
    while True:
        busy = {c.key: c.busy_hours for c in best.engines if c.busy_hours}
        if not busy:
            break
        slowest = max(busy, key=busy.get)
        trial = {
            **current,
            slowest: replace(current[slowest], replicas=current[slowest].replicas + 1),
        }
        stage = make_wave("all steps", placed, trial, inv, None, ())
        if stage is None:
            break
        current = trial
        best = estimate(workload, trial, [stage], specs, inv, st, costing)
    hint = {k: e.replicas for k, e in current.items() if e.replicas != engines[k].replicas}
    return (hint, best) if hint else ({}, None)


def check_fits(
    specs: Mapping[str, ModelSpec] | Sequence[ModelSpec],
    inventory: Inventory | None,
    *,
    settings: PlanSettings | None = None,
    strategy: str = "resident",
) -> Plan | None:
    """Pre-flight check for a pipeline that is about to start these engines all at once.

    Uses each spec's own ``tensor_parallel_size`` (what the engines will be started with)
    and, by default, requires every engine to be resident together, as the pipelines run
    today. Call it before Ray or any engine starts.

    Args:
        specs: The engines to start, as ``{key: spec}`` or a list (keyed by name).
        inventory: ``inventory_from_cluster(cluster)``; None skips the check (the cluster
            config does not describe its GPUs) and returns None.
        settings: Memory model (defaults: ``PlanSettings()``); ``tensor_parallel`` and
            ``strategy`` are forced to ``config`` and ``strategy``.
        strategy: ``resident`` (default) or ``auto`` once a pipeline runs stage by stage.

    Returns:
        The plan, or None without an inventory.

    Raises:
        ConfigError: With a one-line reason naming the model and the numbers.
    """
    if inventory is None:
        return None
    if not isinstance(specs, Mapping):
        specs = {s.name: s for s in specs}
    specs = {k: fill_from_checkpoint(v) for k, v in specs.items()}
    st = replace(settings or PlanSettings(), tensor_parallel="config", strategy=strategy)
    step = Step("engines", tuple(Seat(k, "engine", 0.0, 0.0) for k in specs))
    work = Workload("engines", (Phase((step,)),))
    return plan(work, specs, inventory, st, require_size=False)


def configured_size(key: str, spec: ModelSpec, inventory: Inventory) -> float:
    """The share of ``inventory`` :func:`check_fits` gives ``spec``'s engine: GPUs at its
    configured TP (x replicas), or GiB of RAM on CPU; the size waves are filled by.

    Raises:
        ConfigError: As :func:`check_fits` would for this engine alone.
    """
    st = replace(PlanSettings(), tensor_parallel="config", strategy="resident")
    e = size_engine(key, fill_from_checkpoint(spec), inventory, st, require_size=False)
    return engine_size(e, inventory)
