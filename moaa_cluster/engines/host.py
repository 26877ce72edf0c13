"""The one owner of engine lifetime: check, start, swap and release a run's vLLM engines.

:func:`preflight` refuses, before Ray or any engine starts, engines that cannot be resident
together (the placement planner, ``engines.placement``). :func:`hosting` joins Ray and yields
an :class:`EngineHost` whose :meth:`~EngineHost.use` makes a set of engines resident (once
for a run whose engines fit together, once per pass for ``pipeline.layered``); on exit every
engine it started is released (:func:`release`). :func:`engines` is both for a run that
starts its engines all at once. The Ray session itself (offline settings, joining Ray) is
``moaa_cluster.runtime``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from moaa_cluster import runtime
from moaa_cluster.engines.placement import (
    Capacity,
    check_fits,
    configured_size,
    inventory_from_cluster,
)
from moaa_cluster.engines.serve_llm import app_name, start_engines, stop_engines
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.engines.watch import EngineWatcher
from moaa_cluster.errors import ConfigError

log = logging.getLogger(__name__)


def preflight(cluster: dict, specs: list) -> None:
    """Refuses, before Ray or any engine starts, engines that cannot be resident together.

    The placement planner sizes each vLLM engine at its configured tensor-parallel size
    (weights + KV cache for its context) against the inventory the cluster config describes
    (``nodes``, ``gpus_per_node``, ``gpu_memory_gb``; on CPU the KV-cache space). A config
    that does not describe its GPUs (``cluster=ray_address``) is checked by Ray's own
    resource view once joined (:func:`check_capacity`).

    Raises:
        ConfigError: One line naming the model and the numbers.
    """
    vllm = engine_specs(specs)
    if vllm:
        check_fits(vllm, inventory_from_cluster(cluster))


def engine_specs(specs: list) -> list:
    """One spec per vLLM engine: models that share an engine (a rehearsal) count once, as
    the one with the longest context (the engine is started for it)."""
    by_engine: dict[str, object] = {}
    for s in specs:
        if s.backend != "vllm":
            continue
        prev = by_engine.get(s.engine_name)
        if prev is None or s.max_model_len > prev.max_model_len:
            by_engine[s.engine_name] = s
    return list(by_engine.values())


def preflight_capacity(cluster: dict, specs: Mapping[str, ModelSpec]) -> Capacity:
    """The cluster as the pre-flight check sees it, for grouping ``specs``' engines into waves.

    ``fits(keys)`` is :func:`preflight` on those keys' engines; ``size(key)`` is the share of
    the inventory the planner gives that engine at its configured TP (GPUs, or GiB of RAM on
    CPU), so ``moaa synth`` layer by layer groups a layer the way ``moaa plan`` splits it
    (``engines.placement.waves.first_fit_waves``). A cluster config without an inventory
    (``cluster=ray_address``): every size is 0 and the check is Ray's, once joined.
    """
    inventory = inventory_from_cluster(cluster)
    sizes: dict[str, float] = {}

    def size(key: str) -> float:
        if inventory is None:
            return 0.0
        if key not in sizes:
            sizes[key] = configured_size(key, specs[key], inventory)
        return sizes[key]

    def fits(keys: Sequence[str]) -> None:
        preflight(cluster, [specs[k] for k in keys])

    return Capacity(size=size, fits=fits, hosted=lambda key: specs[key].backend == "vllm")


def check_capacity(specs: list, cluster_resources: dict) -> None:
    """Refuses engines that cannot be placed on this cluster, before any of them starts."""
    gpus = float(cluster_resources.get("GPU", 0))
    for spec in engine_specs(specs):
        if spec.accelerator_type is None and spec.tensor_parallel_size > 1:
            raise ConfigError(
                f"model {spec.name}: tensor_parallel_size {spec.tensor_parallel_size} needs GPUs; "
                f"this cluster config runs engines on CPU (accelerator_type: null)"
            )
        if spec.accelerator_type is not None and spec.tensor_parallel_size > gpus:
            raise ConfigError(
                f"model {spec.name}: tensor_parallel_size {spec.tensor_parallel_size} > "
                f"{gpus:g} GPUs in the Ray cluster"
            )


def release(specs: list, *, owns_ray: bool, timeout_s: float = 60.0) -> dict:
    """Deletes this run's engines, checks their placement groups are gone, stops what it started.

    With ``owns_ray`` (this run started Ray in-process) Serve and Ray are shut down too, so
    the next run in this process (a sweep's next point) starts clean; a cluster this run only
    joined keeps running, minus this run's engines.

    Returns:
        What was released: engine apps deleted, placement groups still in use after
        ``timeout_s`` (empty when clean), and what became of Ray.
    """
    import ray
    from ray import serve

    try:
        running = set(serve.status().applications)
    except Exception:  # no Serve instance: nothing of ours is deployed
        running = set()
    ours = [s for s in specs if s.backend == "vllm" and app_name(s) in running]
    apps = sorted({app_name(s) for s in ours})
    stop_engines(ours)
    # every group counts in a cluster we own; only our engines' groups in a shared one
    scope = None if owns_ray else [f"::{a}#" for a in apps]
    deadline = time.monotonic() + timeout_s
    left = runtime.placement_groups_in_use(scope)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = runtime.placement_groups_in_use(scope)
    if left:
        log.warning("placement groups still in use after releasing the engines: %s", left)
    report = {"engines_deleted": apps, "placement_groups_left": left}
    if owns_ray:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        report["ray"] = "shut down"
    else:
        report["ray"] = "left running (joined, not started by this run)"
    return report


class EngineHost:
    """The engines a run hosts; :meth:`use` makes a set resident, swapping out the rest.

    A run whose engines fit together calls ``use`` once; a run that goes layer by layer
    (``pipeline.layered``) calls it per pass, and only the engines of that pass hold
    accelerators meanwhile.
    """

    def __init__(self, timings: dict | None = None):
        self.resident: dict[str, object] = {}  # Serve app name -> spec
        self.used: dict[str, object] = {}
        self.timings = timings if timings is not None else {}
        self._watcher = None

    def use(self, specs: list) -> None:
        """Stops resident engines not in ``specs``, then starts those of ``specs`` not up."""
        import ray

        want = {app_name(s): s for s in specs if s.backend == "vllm"}
        self._unwatch()
        drop = [s for a, s in self.resident.items() if a not in want]
        if drop:
            log.info("stopping engine(s) not needed next: %s", ", ".join(s.name for s in drop))
            stop_engines(drop)
            for a in [a for a in self.resident if a not in want]:
                del self.resident[a]
        check_capacity(specs, ray.cluster_resources())
        t0 = time.monotonic()
        start_engines(specs)
        self.timings["engine_start"] = self.timings.get("engine_start", 0.0) + (
            time.monotonic() - t0
        )
        self.resident.update(want)
        self.used.update(want)
        self._watcher = EngineWatcher(list(self.resident.values())).__enter__()

    def _unwatch(self) -> None:
        if self._watcher is not None:
            self._watcher.__exit__(None, None, None)
            self._watcher = None


@contextmanager
def hosting(
    cluster: dict,
    *,
    keep: bool = False,
    timings: dict | None = None,
    report: dict | None = None,
) -> Iterator[EngineHost]:
    """Joins Ray and yields an :class:`EngineHost`; releases every engine it started after.

    On exit (also after a failure) the engines are deleted and their placement groups
    checked; Ray itself is shut down if this call started it, so consecutive runs in one
    process (sweep points) each start clean. With ``keep`` everything stays up for the next
    command on the same cluster.

    Args:
        cluster: The cluster config (``conf/cluster``) as a plain mapping.
        keep: Leave engines (and Ray) running.
        timings: Receives ``engine_start`` seconds (summed over swaps).
        report: Receives the Ray session and, after exit, what :func:`release` released
            (manifests record it).
    """
    import ray

    # a driver that joins a cluster (an address in the config, or RAY_ADDRESS as `ray job
    # submit` sets) must never shut down Serve or Ray for everyone else on it
    joins = bool(cluster.get("address") or os.environ.get("RAY_ADDRESS"))
    owns_ray = not ray.is_initialized() and not joins
    runtime.init_ray(cluster)
    if report is not None:
        report.update({**runtime.ray_session(), "started_by_run": owns_ray})
    host = EngineHost(timings)
    try:
        yield host
    finally:
        host._unwatch()
        if keep:
            if report is not None:
                report["ray"] = "kept running (keep_engines)"
        else:
            released = release(list(host.used.values()), owns_ray=owns_ray)
            if report is not None:
                report.update(released)


@contextmanager
def engines(
    cluster: dict,
    specs: list,
    *,
    keep: bool = False,
    timings: dict | None = None,
    report: dict | None = None,
) -> Iterator[None]:
    """Checks the plan, joins Ray, starts ``specs``' engines all at once, and stops them after.

    See :func:`hosting` for ``keep``, ``timings`` and ``report``.
    """
    preflight(cluster, specs)
    with hosting(cluster, keep=keep, timings=timings, report=report) as host:
        host.use(specs)
        yield
