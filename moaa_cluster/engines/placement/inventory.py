"""The hardware a plan places engines on (:class:`Inventory`) and the planner's knobs
(:class:`PlanSettings`): the inputs of every other module in ``engines.placement``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moaa_cluster.errors import ConfigError

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
