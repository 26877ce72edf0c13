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
in ``engines/throughput.py``.

Modules, each importing only those above it in this list:

* ``inventory``: the hardware (:class:`Inventory`) and the knobs (:class:`PlanSettings`).
* ``fit``: one engine sized (:func:`size_engine`: TP, weights, KV cache, overhead).
* ``waves``: engines packed into nodes, and :func:`first_fit_waves`, the one wave function
  that both ``moaa plan`` and ``moaa synth``'s layer-by-layer executor use.
* ``cost``: tokens, throughput and stage times (:func:`estimate`).
* ``planner``: :func:`plan` and the pipelines' pre-flight :func:`check_fits`.
* ``report``: ``moaa plan``'s printed report (:func:`format_plan`).

Pipelines call :func:`check_fits` (through ``engines.host.preflight``) before starting engines.
"""

from moaa_cluster.engines.placement.cost import Costing, EngineCost, Estimate, estimate
from moaa_cluster.engines.placement.fit import EnginePlan, fill_from_checkpoint, size_engine
from moaa_cluster.engines.placement.inventory import (
    Inventory,
    PlanSettings,
    inventory_from_cluster,
)
from moaa_cluster.engines.placement.planner import Plan, check_fits, configured_size, plan
from moaa_cluster.engines.placement.report import format_plan
from moaa_cluster.engines.placement.waves import Capacity, Wave, first_fit_waves

__all__ = [
    "Capacity",
    "Costing",
    "EngineCost",
    "EnginePlan",
    "Estimate",
    "Inventory",
    "Plan",
    "PlanSettings",
    "Wave",
    "check_fits",
    "configured_size",
    "estimate",
    "fill_from_checkpoint",
    "first_fit_waves",
    "format_plan",
    "inventory_from_cluster",
    "plan",
    "size_engine",
]
