"""Sizing one engine: its tensor-parallel size and memory (weights, KV cache, overhead).

The memory model is described in ``engines.placement`` (the package docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from moaa_cluster.engines.placement.inventory import (
    DTYPE_BYTES,
    GIB,
    QUANT_BYTES,
    Inventory,
    PlanSettings,
)
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError


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
    if inv.on_cpu:
        return _on_cpu(key, spec, inv, st, roles)
    if st.tensor_parallel == "config":
        return _at_configured_tp(key, spec, inv, st, roles)
    return _at_smallest_tp(key, spec, inv, st, roles)


def _on_cpu(
    key: str, spec: ModelSpec, inv: Inventory, st: PlanSettings, roles: tuple[str, ...]
) -> EnginePlan:
    """A vLLM-CPU engine: TP 1, its weights + the fixed KV space + overhead in one node's RAM."""
    configured = spec.tensor_parallel_size
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


def _at_configured_tp(
    key: str, spec: ModelSpec, inv: Inventory, st: PlanSettings, roles: tuple[str, ...]
) -> EnginePlan:
    """``tensor_parallel: config``: the spec's own TP, checked (naming the smallest that fits)."""
    configured = spec.tensor_parallel_size
    if configured > inv.gpus_per_node:
        raise ConfigError(
            f"model {spec.name}: tensor_parallel_size {configured} > {inv.gpus_per_node} "
            f"GPUs per node; tensor parallelism stays within one node"
        )
    s = _size(spec, configured, inv, st)
    if _needs(s) > s["capacity_gb"]:
        candidates = _tp_candidates(spec, inv.gpus_per_node)
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


def _at_smallest_tp(
    key: str, spec: ModelSpec, inv: Inventory, st: PlanSettings, roles: tuple[str, ...]
) -> EnginePlan:
    """``tensor_parallel: auto``: the smallest power of two within a node that fits."""
    configured = spec.tensor_parallel_size
    candidates = _tp_candidates(spec, inv.gpus_per_node)
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


def fill_from_checkpoint(spec: ModelSpec) -> ModelSpec:
    """Takes planning facts from a local checkpoint (``config.json``, weight files) if present.

    The checkpoint is what the engine loads, so its ``config.json`` wins over the model
    config's architecture facts: ``sampler.path=<SFT checkpoint>`` on a config written for
    another model is still planned right. ``params_b`` comes from the weight files only when
    the config has none (quantized files would understate it). Reads files; loads nothing.
    """
    if not spec.path:
        return spec
    from moaa_cluster.runs.model_cache import local_files  # a URI: its config, no weights

    local = local_files(spec.path)
    if local is None:
        return spec
    root = Path(local)
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
