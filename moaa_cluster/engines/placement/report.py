"""``moaa plan``'s readable report of a :class:`~moaa_cluster.engines.placement.planner.Plan`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from moaa_cluster.engines.placement.planner import Plan

MODES = {
    "resident": "all resident",
    "layers": "layer by layer",
    "waves": "layer by layer, a step split into waves",
}


def _hours(h: float | None) -> str:
    if h is None:
        return "-"
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.0f} min"
    return f"{h:,.1f} h"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        cells = [
            str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i])
            for i, c in enumerate(r)
        ]
        return "  " + "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_plan(p: Plan) -> str:
    """Readable multi-line report of a plan and its estimate."""
    lines = [f"{p.workload} on {p.inventory.describe()}", _memory_model(p)]
    lines += _engine_table(p)
    lines += _placement_lines(p)
    for note in p.notes:
        lines.append(f"  note: {note}")
    if p.estimate is not None:
        lines += _estimate_lines(p)
    return "\n".join(lines)


def _memory_model(p: Plan) -> str:
    inv, st = p.inventory, p.settings
    if inv.on_cpu:
        return (
            f"  memory model: weights + {inv.cpu_kv_cache_gb:g} GiB KV cache (VLLM_CPU_KVCACHE_SPACE)"
            f" + {st.cpu_overhead_gb:g} GiB per engine"
        )
    return (
        f"  memory model: gpu_memory_utilization {st.gpu_memory_utilization:g}, "
        f"{st.overhead_gb_per_gpu:g} GiB/GPU overhead, KV cache for "
        f"{st.concurrent_sequences} sequences x max_model_len; TP {st.tensor_parallel}"
    )


def _engine_table(p: Plan) -> list[str]:
    """One row per engine replica: TP, GPUs, memory, KV room, roles."""
    inv = p.inventory
    rows = []
    for e in p.engines.values():
        if e.external:
            rows.append(
                [e.name, "-", "-", "", "", "", "", "", "external server; " + ", ".join(e.roles)]
            )
            continue
        rows.append(
            [
                e.name,
                str(e.tp),
                str(e.gpus) if not inv.on_cpu else "-",
                f"{e.weights_gb:.1f}",
                f"{e.kv_gb:.1f}" if e.kv_gb is not None else "?",
                f"{e.need_gb:.1f}",
                f"{e.capacity_gb:.1f}" if e.capacity_gb is not None else "-",
                f"{e.sequences:.0f}" if e.sequences is not None else "?",
                ", ".join(e.roles),
            ]
        )
    lines = [
        "  per engine replica, GiB over its TP group (seqs: full max_model_len sequences its "
        "KV room holds)"
    ]
    header = ["engine", "TP", "GPUs", "weights", "KV", "need", "has", "seqs", "roles"]
    return lines + _table(header, rows, right={1, 2, 3, 4, 5, 6, 7})


def _placement_lines(p: Plan) -> list[str]:
    """The placement mode and why, then each stage's engines node by node."""
    inv = p.inventory
    reps = ", ".join(f"x{n} {unit}{'s' if n > 1 else ''}" for n, unit in p.repeats if n > 1)
    lines = [f"  placement: {MODES.get(p.mode, p.mode)} - {p.reason}"]
    for i, s in enumerate(p.stages, 1):
        where = "  |  ".join(
            f"node {n}: "
            + " ".join(
                f"{p.engines[k].name}({p.engines[k].tp})" if not inv.on_cpu else p.engines[k].name
                for k in keys
            )
            for n, keys in enumerate(s.nodes)
            if keys
        )
        size = f"{s.memory_gb:.1f} GiB" if inv.on_cpu else f"{s.gpus} GPU{'s' * (s.gpus != 1)}"
        lines.append(f"    stage {i}: {s.label:<22} {size:>9}  {where}")
    if p.mode != "resident":
        lines.append(
            f"    stages run one after another, parquet in between{' (' + reps + ')' if reps else ''}; "
            f"{p.loads_per_run} engine loads per run"
        )
    return lines


def _estimate_lines(p: Plan) -> list[str]:
    """The estimate: per engine calls, tokens and busy time, then the totals."""
    inv, est = p.inventory, p.estimate
    lines = [
        f"  estimate for {est.rows:,} instructions (throughput: {est.throughput}; {est.tokens_note})"
    ]
    rows = [
        [
            c.name,
            f"{c.calls:,.0f}",
            f"{c.output_tokens / 1e6:,.2f}M",
            f"{c.tokens_per_s:,.0f}" if c.tokens_per_s else "-",
            _hours(c.busy_hours),
            c.source,
        ]
        for c in est.engines
    ]
    lines += _table(
        ["engine", "calls", "gen tokens", "tok/s", "busy", "figure"], rows, {1, 2, 3, 4}
    )
    if est.missing:
        lines.append(
            f"  no throughput figure for {', '.join(est.missing)} on {inv.device}: add one to "
            f"the throughput table or `measured`"
        )
    elif inv.on_cpu:
        lines.append(
            f"  wall time ~{_hours(est.wall_hours)} (of which engine loads {_hours(est.load_hours)})"
        )
    else:
        lines.append(
            f"  wall time ~{_hours(est.wall_hours)} (engine loads {_hours(est.load_hours)}); "
            f"GPU-hours ~{est.gpu_hours:,.0f} held by engines, "
            f"~{est.allocated_gpu_hours:,.0f} for all {inv.gpus} GPUs"
        )
    if p.replica_estimate is not None:
        lines.append(_replica_line(p))
    line = orchestration_line(est)
    if line:
        lines.append(line)
    return lines


def orchestration_line(est) -> str | None:
    """The orchestration rate the run needs: the calls/s its engines take, against the measured
    ceiling per worker CPU, and the worker CPUs that makes."""
    need = est.calls_per_s
    if need is None:
        return None
    text = f"  orchestration: the engines take ~{need:,.1f} model calls/s"
    if not est.calls_per_cpu:
        return text + " (no measured ceiling: set orchestration_calls_per_cpu)"
    cpus = max(1, math.ceil(need / est.calls_per_cpu))
    return (
        f"{text}; measured ceiling {est.calls_per_cpu:,.0f} calls/s per worker CPU "
        f"(benchmarks/orchestration.py) -> {cpus} worker CPU{'s' if cpus > 1 else ''} "
        "(cluster.workers x the pool's CPUs) keep them busy"
    )


def _replica_line(p: Plan) -> str:
    """What the idle GPUs would do as extra replicas of the slowest engines."""
    hinted = p.replica_estimate
    used = sum(e.gpus for e in p.engines.values()) + sum(
        (n - p.engines[k].replicas) * p.engines[k].tp for k, n in p.replica_hint.items()
    )
    reps = ", ".join(f"{p.engines[k].name} x{n}" for k, n in p.replica_hint.items())
    return (
        f"  idle GPUs as engine replicas (`replicas:` in the model configs): {reps} -> "
        f"{used} GPUs, wall time ~{_hours(hinted.wall_hours)}, GPU-hours "
        f"~{hinted.gpu_hours:,.0f} held, ~{hinted.allocated_gpu_hours:,.0f} for all"
    )
