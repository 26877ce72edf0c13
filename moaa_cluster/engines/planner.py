"""Placement planner: what each engine needs, which engines are resident together, and the cost.

Pure arithmetic over model specs and a cluster inventory: no Ray, no vLLM, so ``moaa plan`` and
the pipelines' pre-flight check answer in milliseconds, before anything is allocated.

Memory model, per engine (one vLLM instance over a tensor-parallel group of ``tp`` GPUs)::

    weights  = params_b * 1e9 * bytes per weight              (dtype or quantization)
    kv cache = 2 * layers * kv_heads' * head_dim * kv bytes    per token, times
               max_model_len * concurrent_sequences            (kv_heads' = tp * ceil(kv_heads/tp):
                                                                vLLM replicates KV heads when
                                                                tp > kv_heads)
    overhead = overhead_gb_per_gpu * tp                        (activations, CUDA graphs, NCCL)
    fits when weights + kv cache + overhead <= tp * gpu_memory_gb * gpu_memory_utilization

Sliding-window layers (Gemma 2/3) are sized as full attention, which over-counts their cache:
the planner errs on the side of refusing. On CPU inventories (``gpus_per_node: 0``) an engine
needs its weights, the fixed KV space vLLM-CPU reserves (``VLLM_CPU_KVCACHE_SPACE``) and a
process overhead, packed by memory into the nodes' RAM.

Placement, in order of preference (``strategy: auto``):

* ``resident``: every engine of every step at once; rows stream through all of them.
* ``layers``: one step (mixture layer, or judge criteria / critiques / verdict) at a time, its
  engines resident, parquet in between; an engine used by consecutive stages stays loaded.
* ``waves``: a step whose engines do not fit together is split into waves of seats that do
  (seats of one layer are independent, so each wave writes its answer columns to parquet).
* otherwise refuse, naming the model or step and the numbers.

Tensor parallelism stays within one node. A model key used by several seats or roles (the
paper's Qwen2-72B critiques and gives the verdict) is one engine, as is one served model under
two keys. What a run asks of the engines is in ``engines/workload.py``, the tokens/s figures
in ``engines/throughput.py``, the printed report in ``engines/plan_report.py``.

Pipelines call :func:`check_fits` before starting engines.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.engines.throughput import Rate, ThroughputTable
from moaa_cluster.engines.workload import (
    Phase,
    Seat,
    Step,
    Workload,
    comparison_rounds,
    prefs_workload,
    synth_workload,
)
from moaa_cluster.errors import ConfigError

__all__ = [  # the workload and throughput names are re-exported: callers import one module
    "ConfigError",
    "EnginePlan",
    "Estimate",
    "Inventory",
    "Phase",
    "Plan",
    "PlanSettings",
    "Rate",
    "Seat",
    "Stage",
    "Step",
    "ThroughputTable",
    "Workload",
    "check_fits",
    "comparison_rounds",
    "estimate",
    "fill_from_checkpoint",
    "inventory_from_cluster",
    "plan",
    "prefs_workload",
    "size_engine",
    "synth_workload",
]

GIB = float(2**30)

# bytes per weight; a quantization method in engine_kwargs takes precedence over the dtype
DTYPE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "half": 2.0, "auto": 2.0, "float32": 4.0}
QUANT_BYTES = {
    "fp8": 1.0,
    "awq": 0.5,
    "awq_marlin": 0.5,
    "gptq": 0.5,
    "gptq_marlin": 0.5,
    "bitsandbytes": 0.5,
}
STRATEGIES = ("auto", "resident", "layers", "waves")
TP_MODES = ("auto", "config")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inventory:
    """The hardware a run may use.

    Attributes:
        nodes: Machines.
        gpus_per_node: GPUs per machine; 0 means engines run on CPU (vLLM-CPU).
        gpu_memory_gb: Memory of one GPU in GiB (an "80GB" A100 has 80 GiB).
        accelerator: Ray accelerator type (``A100-80G``); picks the throughput figures.
        cpu_memory_gb: CPU engines: RAM per node the engines may use (None: not checked).
        cpu_kv_cache_gb: CPU engines: KV cache each engine reserves (VLLM_CPU_KVCACHE_SPACE).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    gpu_memory_gb: float = 0.0
    accelerator: str | None = None
    cpu_memory_gb: float | None = None
    cpu_kv_cache_gb: float = 4.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"inventory: nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"inventory: gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.gpus_per_node and not self.gpu_memory_gb > 0:
            raise ConfigError("inventory: gpus_per_node is set, so gpu_memory_gb must be > 0")
        if not self.cpu_kv_cache_gb > 0:
            raise ConfigError(f"inventory: cpu_kv_cache_gb must be > 0, got {self.cpu_kv_cache_gb}")

    @property
    def on_cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def device(self) -> str:
        """Key into the throughput table: the accelerator type, or ``cpu``."""
        return "cpu" if self.on_cpu else (self.accelerator or "gpu")

    def describe(self) -> str:
        if self.on_cpu:
            each = " each" if self.nodes > 1 else ""
            ram = f", {self.cpu_memory_gb:.0f} GiB RAM{each}" if self.cpu_memory_gb else ""
            return f"{self.nodes} CPU node{'s' if self.nodes > 1 else ''}{ram} (vLLM-CPU)"
        gpu = self.accelerator or "GPU"
        return (
            f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.gpus_per_node} {gpu} "
            f"({self.gpu_memory_gb:g} GiB each) = {self.gpus} GPUs"
        )

    @classmethod
    def from_dict(cls, cfg: Mapping) -> Inventory:
        """From a plain mapping with the field names; unknown keys are refused."""
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"inventory: unknown keys {sorted(unknown)}")
        values = {k: v for k, v in cfg.items() if v is not None}
        for key in ("nodes", "gpus_per_node"):
            if key in values:
                values[key] = int(values[key])
        for key in ("gpu_memory_gb", "cpu_memory_gb", "cpu_kv_cache_gb"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values)


def inventory_from_cluster(cluster: Mapping) -> Inventory | None:
    """The inventory a cluster config describes, or None when it does not describe its GPUs.

    ``conf/cluster/slurm_a100.yaml`` names ``nodes``, ``gpus_per_node`` and ``gpu_memory_gb``;
    a CPU cluster (``accelerator_type: null``) is one CPU node whose engines reserve
    ``env.VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache each (unset, vLLM-CPU 0.32 sizes the cache
    from ``gpu_memory_utilization`` of the RAM instead; the planner then assumes 4 GiB). A GPU
    cluster config without those keys (e.g. ``ray_address``) returns None: only Ray's own
    resource view can check it.
    """
    kv = (cluster.get("env") or {}).get("VLLM_CPU_KVCACHE_SPACE")
    cpu_kv = float(kv) if kv not in (None, "", "0", 0) else 4.0
    if cluster.get("accelerator_type") is None and not cluster.get("gpus_per_node"):
        return Inventory(
            nodes=int(cluster.get("nodes") or 1),
            cpu_memory_gb=cluster.get("cpu_memory_gb"),
            cpu_kv_cache_gb=cpu_kv,
        )
    if not (cluster.get("gpus_per_node") and cluster.get("gpu_memory_gb")):
        return None
    return Inventory(
        nodes=int(cluster.get("nodes") or 1),
        gpus_per_node=int(cluster["gpus_per_node"]),
        gpu_memory_gb=float(cluster["gpu_memory_gb"]),
        accelerator=cluster.get("accelerator_type"),
        cpu_kv_cache_gb=cpu_kv,
    )


@dataclass(frozen=True)
class PlanSettings:
    """Memory-model knobs and the placement policy (``conf/plan.yaml`` documents each).

    Attributes:
        gpu_memory_utilization: Fraction of each GPU vLLM may use (its default is 0.9); a
            model's ``engine_kwargs.gpu_memory_utilization`` overrides it for that model.
        overhead_gb_per_gpu: Activations, CUDA graphs and communication buffers per GPU.
        concurrent_sequences: Full-length (``max_model_len``) sequences the KV cache must hold,
            so the engine batches enough to reach its throughput.
        cpu_overhead_gb: CPU engines: process memory besides weights and KV cache.
        tensor_parallel: ``auto`` (smallest power of two that fits) or ``config`` (each
            spec's ``tensor_parallel_size``, checked: what the pipelines start).
        strategy: ``auto`` (resident, else layers, else waves) or one of them only.
        engine_start_s: Seconds an engine takes to start besides reading weights.
        load_gb_per_s: GiB/s read from the model store when an engine loads.
    """

    gpu_memory_utilization: float = 0.9
    overhead_gb_per_gpu: float = 5.0
    concurrent_sequences: int = 16
    cpu_overhead_gb: float = 1.0
    tensor_parallel: str = "auto"
    strategy: str = "auto"
    engine_start_s: float = 120.0
    load_gb_per_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.concurrent_sequences < 1:
            raise ConfigError(f"concurrent_sequences must be >= 1, got {self.concurrent_sequences}")
        if self.tensor_parallel not in TP_MODES:
            raise ConfigError(
                f"tensor_parallel must be one of {TP_MODES}, got {self.tensor_parallel!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.overhead_gb_per_gpu < 0 or self.cpu_overhead_gb < 0:
            raise ConfigError("overheads must be >= 0")
        if not self.load_gb_per_s > 0:
            raise ConfigError(f"load_gb_per_s must be > 0, got {self.load_gb_per_s}")

    @classmethod
    def from_dict(cls, cfg: Mapping) -> PlanSettings:
        """From a plain mapping with the field names; unknown keys are refused."""
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"plan settings: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in cfg.items() if v is not None})


# --------------------------------------------------------------------------- sizing


@dataclass(frozen=True)
class EnginePlan:
    """One engine (a model key) as placed: its TP, memory and roles.

    Memory figures are GiB over the engine's whole TP group (one replica).
    """

    key: str
    name: str
    tp: int
    configured_tp: int
    replicas: int
    weights_gb: float
    kv_gb: float | None
    overhead_gb: float
    capacity_gb: float | None
    sequences: float | None
    roles: tuple[str, ...]
    external: bool = False
    on_gpu: bool = True

    @property
    def need_gb(self) -> float:
        return self.weights_gb + (self.kv_gb or 0.0) + self.overhead_gb

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas if self.on_gpu and not self.external else 0


def _weight_bytes(spec: ModelSpec) -> float:
    quant = str((spec.engine_kwargs or {}).get("quantization") or "").lower()
    if quant:
        if quant not in QUANT_BYTES:
            raise ConfigError(
                f"model {spec.name}: quantization {quant!r} is unknown to the planner "
                f"(known: {sorted(QUANT_BYTES)})"
            )
        return QUANT_BYTES[quant]
    if spec.dtype not in DTYPE_BYTES:
        raise ConfigError(
            f"model {spec.name}: dtype {spec.dtype!r} is unknown to the planner "
            f"(known: {sorted(DTYPE_BYTES)})"
        )
    return DTYPE_BYTES[spec.dtype]


def _kv_bytes_per_token(spec: ModelSpec, tp: int) -> float | None:
    """KV cache bytes per token over the TP group; None when the architecture is unknown."""
    if not (spec.num_hidden_layers and spec.num_key_value_heads and spec.head_dim):
        return None
    kv_dtype = str((spec.engine_kwargs or {}).get("kv_cache_dtype") or "auto")
    kv_bytes = 1.0 if kv_dtype.startswith("fp8") else DTYPE_BYTES.get(spec.dtype, 2.0)
    heads = tp * math.ceil(spec.num_key_value_heads / tp)  # replicated when tp > kv heads
    return 2.0 * spec.num_hidden_layers * heads * spec.head_dim * kv_bytes


def _tp_candidates(spec: ModelSpec, gpus_per_node: int) -> list[int]:
    """Powers of two within one node that vLLM accepts for this model's heads."""
    out, tp = [], 1
    while tp <= gpus_per_node:
        heads_ok = not spec.num_attention_heads or spec.num_attention_heads % tp == 0
        kv = spec.num_key_value_heads
        kv_ok = not kv or kv % tp == 0 or tp % kv == 0
        if heads_ok and kv_ok:
            out.append(tp)
        tp *= 2
    return out


def _size(spec: ModelSpec, tp: int, inv: Inventory, st: PlanSettings) -> dict:
    """Memory arithmetic for one replica of ``spec`` at ``tp`` (weights 0 when unknown)."""
    weights = (spec.params_b or 0.0) * 1e9 * _weight_bytes(spec) / GIB
    per_token = _kv_bytes_per_token(spec, tp)
    per_seq = per_token * spec.max_model_len / GIB if per_token is not None else None
    if inv.on_cpu:
        capacity = inv.cpu_memory_gb  # None: RAM not known, not checked
        kv = inv.cpu_kv_cache_gb
        overhead = st.cpu_overhead_gb
        sequences = kv / per_seq if per_seq else None
    else:
        util = float((spec.engine_kwargs or {}).get("gpu_memory_utilization") or 0)
        util = util or st.gpu_memory_utilization
        capacity = tp * inv.gpu_memory_gb * util
        overhead = st.overhead_gb_per_gpu * tp
        kv = per_seq * st.concurrent_sequences if per_seq is not None else None
        room = capacity - weights - overhead
        sequences = room / per_seq if per_seq else None
    return {
        "weights_gb": weights,
        "kv_gb": kv,
        "overhead_gb": overhead,
        "capacity_gb": capacity,
        "sequences": sequences,
        "per_seq": per_seq,
    }


def _explain(spec: ModelSpec, tp: int, s: dict, inv: Inventory, st: PlanSettings) -> str:
    kv = (
        f" + KV {s['kv_gb']:.1f} for {st.concurrent_sequences} x {spec.max_model_len} tokens"
        if s["kv_gb"] is not None
        else ""
    )
    need = s["weights_gb"] + (s["kv_gb"] or 0) + s["overhead_gb"]
    return (
        f"needs {need:.1f} GiB at TP {tp} (weights {s['weights_gb']:.1f}{kv} + overhead "
        f"{s['overhead_gb']:.1f}) but {tp} x {inv.gpu_memory_gb:g} GiB x "
        f"{s['capacity_gb'] / (tp * inv.gpu_memory_gb):.2f} = {s['capacity_gb']:.1f} GiB"
    )


def size_engine(
    key: str,
    spec: ModelSpec,
    inv: Inventory,
    st: PlanSettings,
    roles: Sequence[str] = (),
    require_size: bool = True,
) -> EnginePlan:
    """Chooses (``auto``) or checks (``config``) one engine's TP against the inventory.

    Args:
        require_size: Refuse a spec without ``params_b``; off, its weights count as 0 (the
            pre-flight check must not break configs written before the planner existed).

    Raises:
        ConfigError: The model cannot fit, with the numbers; or facts needed are missing.
    """
    roles = tuple(roles)
    if spec.backend != "vllm":  # an OpenAI-compatible server the user runs elsewhere
        return EnginePlan(key, spec.name, 0, 0, 0, 0.0, None, 0.0, 0.0, None, roles, True)
    if spec.params_b is None and require_size:
        raise ConfigError(
            f"model {spec.name}: params_b (billions of parameters) is needed to plan its memory"
        )
    if spec.replicas < 1:
        raise ConfigError(f"model {spec.name}: replicas must be >= 1")
    configured = spec.tensor_parallel_size
    if inv.on_cpu:
        if configured > 1:
            raise ConfigError(
                f"model {spec.name}: tensor_parallel_size {configured} needs GPUs; this "
                f"inventory runs engines on CPU (gpus_per_node: 0, e.g. cluster=local)"
            )
        s = _size(spec, 1, inv, st)
        if s["per_seq"] is not None and s["kv_gb"] < s["per_seq"]:
            raise ConfigError(
                f"model {spec.name}: a {spec.max_model_len}-token sequence needs "
                f"{s['per_seq']:.2f} GiB of KV cache but CPU engines get {s['kv_gb']:g} GiB "
                f"(VLLM_CPU_KVCACHE_SPACE); raise it or lower max_model_len"
            )
        need = s["weights_gb"] + s["kv_gb"] + s["overhead_gb"]
        if inv.cpu_memory_gb and need > inv.cpu_memory_gb:
            raise ConfigError(
                f"model {spec.name}: needs {need:.1f} GiB of RAM (weights {s['weights_gb']:.1f} "
                f"+ KV {s['kv_gb']:g} + overhead {s['overhead_gb']:g}) but a node has "
                f"{inv.cpu_memory_gb:.1f} GiB"
            )
        return EnginePlan(
            key, spec.name, 1, configured, spec.replicas, roles=roles, on_gpu=False, **_fields(s)
        )
    candidates = _tp_candidates(spec, inv.gpus_per_node)
    if st.tensor_parallel == "config":
        if configured > inv.gpus_per_node:
            raise ConfigError(
                f"model {spec.name}: tensor_parallel_size {configured} > {inv.gpus_per_node} "
                f"GPUs per node; tensor parallelism stays within one node"
            )
        s = _size(spec, configured, inv, st)
        if _needs(s) > s["capacity_gb"]:
            sized = {tp: _size(spec, tp, inv, st) for tp in candidates}
            fits = [tp for tp, x in sized.items() if _needs(x) <= x["capacity_gb"]]
            hint = f"; smallest TP that fits: {fits[0]}" if fits else ""
            raise ConfigError(
                f"model {spec.name}: tensor_parallel_size {configured} is too small: "
                f"{_explain(spec, configured, s, inv, st)}{hint}"
            )
        return EnginePlan(
            key, spec.name, configured, configured, spec.replicas, roles=roles, **_fields(s)
        )
    if not candidates:
        raise ConfigError(
            f"model {spec.name}: no tensor-parallel size up to {inv.gpus_per_node} GPUs divides "
            f"its {spec.num_attention_heads} attention heads"
        )
    for tp in candidates:
        s = _size(spec, tp, inv, st)
        if _needs(s) <= s["capacity_gb"]:
            return EnginePlan(
                key, spec.name, tp, configured, spec.replicas, roles=roles, **_fields(s)
            )
    top = candidates[-1]
    raise ConfigError(
        f"model {spec.name} does not fit one node: {_explain(spec, top, _size(spec, top, inv, st), inv, st)}"
        f"; lower concurrent_sequences or max_model_len, quantize, or use larger GPUs"
    )


def _needs(s: dict) -> float:
    return s["weights_gb"] + (s["kv_gb"] or 0.0) + s["overhead_gb"]


def _fields(s: dict) -> dict:
    return {k: s[k] for k in ("weights_gb", "kv_gb", "overhead_gb", "capacity_gb", "sequences")}


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Stage:
    """Engines resident together, and which steps of which phase they serve."""

    label: str
    engines: tuple[str, ...]
    nodes: tuple[tuple[str, ...], ...]  # engine keys per node (a replica appears once each)
    phase: int | None  # None: every phase (resident)
    steps: tuple[int, ...]  # step indices within the phase (all, when resident)
    gpus: int = 0
    memory_gb: float = 0.0


def _pack(keys: Sequence[str], engines: Mapping[str, EnginePlan], inv: Inventory):
    """First-fit decreasing of engine replicas into nodes; None when they do not fit."""
    items = []
    for key in keys:
        e = engines[key]
        if e.external:
            continue
        size = e.need_gb if inv.on_cpu else float(e.tp)
        items += [(size, key)] * e.replicas
    items.sort(key=lambda item: -item[0])
    cap = (inv.cpu_memory_gb or float("inf")) if inv.on_cpu else float(inv.gpus_per_node)
    free = [cap] * inv.nodes
    placed: list[list[str]] = [[] for _ in range(inv.nodes)]
    for size, key in items:
        for n in range(inv.nodes):
            if size <= free[n] + 1e-9:
                free[n] -= size
                placed[n].append(key)
                break
        else:
            return None
    return tuple(tuple(p) for p in placed)


def _stage(label, keys, engines, inv, phase, steps) -> Stage | None:
    """The stage holding ``keys`` together, or None when they do not pack into the nodes."""
    nodes = _pack(keys, engines, inv)
    if nodes is None:
        return None
    keys = tuple(k for k in keys if not engines[k].external)
    return Stage(
        label=label,
        engines=keys,
        nodes=nodes,
        phase=phase,
        steps=tuple(steps),
        gpus=sum(engines[k].gpus for k in keys),
        memory_gb=sum(engines[k].need_gb * engines[k].replicas for k in keys),
    )


def _demand(keys: Iterable[str], engines: Mapping[str, EnginePlan], inv: Inventory) -> str:
    keys = [k for k in keys if not engines[k].external]
    if inv.on_cpu:
        total = sum(engines[k].need_gb * engines[k].replicas for k in keys)
        parts = ", ".join(f"{engines[k].name} {engines[k].need_gb:.1f}" for k in keys)
        return f"{total:.1f} GiB of RAM ({parts})"
    total = sum(engines[k].gpus for k in keys)
    parts = ", ".join(f"{engines[k].name} {engines[k].gpus}" for k in keys)
    return f"{total} GPUs ({parts})"


def _waves(step_models, engines, inv, phase, step_i, label, prev, nxt) -> list[Stage]:
    """Splits one step's engines into waves that fit, first-fit decreasing by size."""

    def size(key: str) -> float:
        return engines[key].need_gb if inv.on_cpu else float(engines[key].gpus)

    order = sorted(step_models, key=lambda k: -size(k))
    waves: list[list[str]] = []
    for key in order:
        for wave in waves:
            if _pack([*wave, key], engines, inv) is not None:
                wave.append(key)
                break
        else:
            if _pack([key], engines, inv) is None:  # only its replicas can exceed the nodes
                e = engines[key]
                raise ConfigError(
                    f"model {e.name}: {e.replicas} replicas do not fit {inv.describe()}; "
                    f"lower its replicas"
                )
            waves.append([key])
    # keep an engine loaded across the stage boundary when a wave shares it with a neighbour
    waves.sort(key=lambda w: (not set(w) & set(prev), bool(set(w) & set(nxt))))
    out = []
    for n, wave in enumerate(waves):
        keys = [k for k in step_models if k in wave]
        tag = f"{label} wave {n + 1}/{len(waves)}" if len(waves) > 1 else label
        out.append(_stage(tag, keys, engines, inv, phase, [step_i]))
    return out


# --------------------------------------------------------------------------- estimate


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
    stages: Sequence[Stage],
    specs: Mapping[str, ModelSpec],
    inv: Inventory,
    st: PlanSettings,
    table: ThroughputTable,
    rows: int,
    tokens_note: str = "",
) -> Estimate:
    """GPU-hours for ``rows`` instructions from expected tokens and the throughput table.

    An engine's busy time is its generated tokens / (its figure x replicas). Within a stage
    engines run side by side, so the stage lasts as long as its slowest GPU engine; CPU
    engines on one node share its cores, so their times add up. Stages run one after another,
    each repeat of a phase (turn, knockout round) again, and a stage loads the engines the
    previous stage did not have (``engine_start_s`` + weights / ``load_gb_per_s``).
    """
    cells = _step_tokens(workload)
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
        rate = None if e.external else table.lookup(inv.device, key, specs[key], e.tp)
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
    base = dict(
        rows=rows,
        engines=tuple(costs),
        throughput=table.name,
        tokens_note=tokens_note,
        missing=tuple(missing),
    )
    if missing:
        return Estimate(
            wall_hours=None, load_hours=None, gpu_hours=None, allocated_gpu_hours=None, **base
        )

    def busy(stage: Stage) -> float:
        """Seconds of generation for one pass of the stage over all rows."""
        seconds = {}
        for key in stage.engines:
            tokens = sum(
                cell.get(key, (0.0, 0.0))[1]
                * (workload.phases[p].repeats if stage.phase is None else 1)
                for (p, s), cell in cells.items()
                if stage.phase is None or (p == stage.phase and s in stage.steps)
            )
            seconds[key] = rows * tokens / (rates[key].tokens_per_s * plan_engines[key].replicas)
        if not seconds:
            return 0.0
        if inv.on_cpu:  # engines on one node share its cores
            return max(sum(seconds.get(k, 0.0) for k in set(node)) for node in stage.nodes)
        return max(seconds.values())

    def load_s(keys: Iterable[str]) -> float:
        keys = [k for k in keys if not plan_engines[k].external]
        if not keys:
            return 0.0
        return max(st.engine_start_s + plan_engines[k].weights_gb / st.load_gb_per_s for k in keys)

    sequence: list[Stage] = []
    if len(stages) == 1 and stages[0].phase is None:
        sequence = list(stages)
    else:
        for p, phase in enumerate(workload.phases):
            ordered = [s for s in stages if s.phase == p]
            sequence += ordered * phase.repeats
    wall = loads = held = 0.0
    resident: set[str] = set()
    for stage in sequence:
        gen = busy(stage)
        new = [k for k in stage.engines if k not in resident]
        load = load_s(new)
        resident = set(stage.engines)
        wall += gen + load
        loads += load
        held += (gen + load) * stage.gpus
    return Estimate(
        wall_hours=wall / 3600,
        load_hours=loads / 3600,
        gpu_hours=None if inv.on_cpu else held / 3600,
        allocated_gpu_hours=None if inv.on_cpu else wall * inv.gpus / 3600,
        **base,
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Where every engine goes, in which stages, and (optionally) what the run costs."""

    workload: str
    inventory: Inventory
    settings: PlanSettings
    mode: str
    reason: str
    engines: dict[str, EnginePlan]
    stages: tuple[Stage, ...]
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

    def format(self) -> str:
        """The plan as a readable table."""
        from moaa_cluster.engines.plan_report import format_plan

        return format_plan(self)


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
) -> tuple[list[Stage], list[str], str | None]:
    """One stage per step, a step split into waves when allowed and needed.

    Returns:
        ``(stages, why each split step was split, None)``, or ``([], [], why)`` on failure.
    """
    stages: list[Stage] = []
    split: list[str] = []
    for p, phase in enumerate(workload.phases):
        for s, step in enumerate(phase.steps):
            stage = _stage(step.label, step.models, engines, inv, p, [s])
            if stage is not None:
                stages.append(stage)
                continue
            demand = f"{step.label} needs {_demand(step.models, engines, inv)}"
            if not waves:
                return [], [], demand
            prev = stages[-1].engines if stages else ()
            nxt = phase.steps[s + 1].models if s + 1 < len(phase.steps) else ()
            split.append(demand)
            stages += _waves(step.models, engines, inv, p, s, step.label, prev, nxt)
    return stages, split, None


def _schedule_loads(stages: Sequence[Stage], workload: Workload) -> dict[str, int]:
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
    table: ThroughputTable | None = None,
    rows: int | None = None,
    tokens_note: str = "",
    require_size: bool = True,
) -> Plan:
    """Sizes every engine of ``workload`` and places them on ``inventory``.

    Args:
        workload: What the run asks (``synth_workload`` / ``prefs_workload``).
        specs: ``{model key: ModelSpec}`` for every model key the workload uses.
        inventory: The hardware.
        settings: Memory model and placement policy (defaults: ``PlanSettings()``).
        table: Throughput figures; with ``rows`` the plan carries an estimate.
        rows: Instructions to estimate for.
        tokens_note: How generated tokens were counted, shown with the estimate.
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
    placed = [k for k in workload.models if not engines[k].external]
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
    repeats = tuple((p.repeats, p.unit) for p in workload.phases)
    tried: list[str] = []
    chosen: tuple[str, str, list[Stage]] | None = None

    def allowed(mode: str) -> bool:
        return st.strategy in ("auto", mode)

    if allowed("resident"):
        stage = _stage("all steps", placed, engines, inv, None, ())
        if stage is not None:
            used = (
                f"{stage.memory_gb:.1f} GiB of RAM"
                if inv.on_cpu
                else f"{stage.gpus} of {inv.gpus} GPUs"
            )
            chosen = ("resident", f"all {len(placed)} engines fit at once ({used})", [stage])
        else:
            tried.append(f"all engines at once need {_demand(placed, engines, inv)}")
    if chosen is None and (allowed("layers") or allowed("waves")):
        stages, split, failed = _layered(workload, engines, inv, waves=allowed("waves"))
        if failed:
            tried.append(failed)
        else:
            chosen = ("waves" if split else "layers", "; ".join(tried + split), stages)
    if chosen is None:
        hint = {
            "resident": "; strategy=auto plans layer by layer instead",
            "layers": "; strategy=auto (or waves) splits a step into waves",
        }.get(st.strategy, "")
        raise ConfigError(
            f"{workload.name}: cannot place on {inv.describe()}: {'; '.join(tried)}{hint}"
        )
    mode, reason, stages = chosen
    loads = _schedule_loads(stages, workload)
    for key, e in engines.items():
        if len(e.roles) > 1:
            times = loads.get(key, 0)
            how = "loaded once" if times == 1 else f"loaded {times} times per run"
            notes.append(f"{e.name} serves {', '.join(e.roles)}: one engine, {how}")
    out = Plan(
        workload=workload.name,
        inventory=inv,
        settings=st,
        mode=mode,
        reason=reason,
        engines=engines,
        stages=tuple(stages),
        repeats=repeats,
        loads_per_run=sum(loads.values()),
        notes=tuple(notes),
    )
    if table is not None and rows:
        est = estimate(workload, engines, stages, specs, inv, st, table, rows, tokens_note)
        out = replace(out, estimate=est)
        if mode == "resident" and not inv.on_cpu and est.wall_hours:
            hint, hinted = _spare_replicas(workload, engines, specs, inv, st, table, rows, est)
            out = replace(out, replica_hint=hint, replica_estimate=hinted)
    return out


def _spare_replicas(workload, engines, specs, inv, st, table, rows, est):
    """Greedy: give the slowest engine one more replica while the engines still pack.

    Returns ``({key: replicas}`` for the engines that changed, their estimate``)``, or
    ``({}, None)`` when no spare GPU shortens the run.
    """
    placed = [k for k in workload.models if not engines[k].external]
    current, best = dict(engines), est
    while True:
        busy = {c.key: c.busy_hours for c in best.engines if c.busy_hours}
        if not busy:
            break
        slowest = max(busy, key=busy.get)
        trial = {
            **current,
            slowest: replace(current[slowest], replicas=current[slowest].replicas + 1),
        }
        stage = _stage("all steps", placed, trial, inv, None, ())
        if stage is None:
            break
        current = trial
        best = estimate(workload, trial, [stage], specs, inv, st, table, rows, est.tokens_note)
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


def fill_from_checkpoint(spec: ModelSpec) -> ModelSpec:
    """Takes planning facts from a local checkpoint (``config.json``, weight files) if present.

    The checkpoint is what the engine loads, so its ``config.json`` wins over the model
    config's architecture facts: ``sampler.path=<SFT checkpoint>`` on a config written for
    another model is still planned right. ``params_b`` comes from the weight files only when
    the config has none (quantized files would understate it). Reads files; loads nothing.
    """
    if not spec.path:
        return spec
    root = Path(os.path.expanduser(spec.path))
    try:
        cfg = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return spec
    cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the LM facts one level down
    facts = {
        k: cfg[k]
        for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
        if isinstance(cfg.get(k), int)
    }
    heads = facts.get("num_attention_heads")
    if heads and "head_dim" not in facts and isinstance(cfg.get("hidden_size"), int):
        facts["head_dim"] = cfg["hidden_size"] // heads
    if heads and "num_key_value_heads" not in facts:
        facts["num_key_value_heads"] = heads  # no GQA
    if spec.params_b is None:
        size = sum(p.stat().st_size for p in root.glob("*.safetensors"))
        if size:
            facts["params_b"] = size / DTYPE_BYTES.get(spec.dtype, 2.0) / 1e9
    return replace(spec, **facts) if facts else spec
