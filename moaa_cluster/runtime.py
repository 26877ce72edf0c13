"""Process-wide setup shared by every task: offline mode, logging, and joining Ray."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "WANDB_MODE": "disabled",  # a trainer integration that imports wandb stays local
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",  # engine logs stay in Ray's log folder; override to debug
}
# Engine settings read from the driver's environment (or a cluster's ``env``) that every
# engine process needs as well. Node-specific ones (VLLM_HOST_IP) travel only when a cluster
# config's ``env`` sets them (conf/cluster/local.yaml: one node).
ENGINE_ENV = ("VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")
_cluster_env_keys: set[str] = set()


def set_offline(env_overrides: dict | None = None) -> None:
    """Turns hub access and telemetry off unless the user's environment already decided.

    ``env_overrides`` (a cluster config's ``env``) is applied on top and, like the offline
    settings, handed to every Ray worker and engine process (:func:`worker_env`).
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in (env_overrides or {}).items():
        os.environ[str(key)] = str(value)
        _cluster_env_keys.add(str(key))


def worker_env() -> dict[str, str]:
    """The environment every Ray worker and engine gets: offline settings + cluster ``env``.

    Ray workers on other nodes do not inherit the driver's environment, and Serve replicas
    do not inherit a job's ``runtime_env`` in every setup, so both are given it explicitly.
    """
    keys = [*OFFLINE_ENV, *ENGINE_ENV, *sorted(_cluster_env_keys)]
    return {k: os.environ[k] for k in keys if k in os.environ}


def configure_logging(level: int = logging.INFO) -> None:
    """Plain one-line logs for our own messages, warnings only from Ray's chattier parts.

    Ray and vLLM install their own (JSON) handlers on import; ours is attached to the package
    logger so its format survives that.
    """
    ours = logging.getLogger("moaa_cluster")
    if not any(getattr(h, "_moaa", False) for h in ours.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[moaa] %(message)s"))
        handler._moaa = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
    ours.setLevel(level)
    ours.propagate = False
    for name in ("ray.serve", "ray.data", "ray.llm", "vllm", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def _no_usage_stats_server(skip: bool) -> Iterator[None]:
    """While Ray starts locally without a dashboard, keeps it from starting its API server.

    Ray 2.60 starts an API server process even with the dashboard off, loading only its
    usage-stats module, and that module probes cloud metadata endpoints at start
    (169.254.169.254, and a DNS lookup of metadata.google.internal) whether or not usage
    stats are enabled. With the dashboard and usage stats off the process has nothing else
    to do, so it is not started; without it the run sends nothing off the host
    (tests/integration/test_sweep_offline.py).
    """
    from ray._private import services

    original = getattr(services, "start_api_server", None)
    if not skip or original is None or os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        yield
        return

    def no_api_server(*args, **kwargs):
        return None, None  # (dashboard url, process): Ray's node handles "not started"

    services.start_api_server = no_api_server
    try:
        yield
    finally:
        services.start_api_server = original


def orphaned_engines() -> list:
    """This user's vLLM engine processes whose Ray worker is gone (re-parented to init).

    A driver killed with SIGKILL takes its local Ray down; the ``VLLM::*`` processes the
    engine replicas spawned are in their own process groups, are re-parented to init, and
    normally exit on their own some seconds later (measured here: gone within ~12 s). One
    that hangs instead keeps its memory; the next run kills it. Only processes already
    orphaned match: a live run's engines have their replica as parent.
    """
    import psutil

    uid = os.getuid()
    found = []
    for p in psutil.process_iter(["pid", "ppid", "uids", "cmdline", "name"]):
        try:
            title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
            if p.info["ppid"] == 1 and title.startswith("VLLM::") and p.info["uids"].real == uid:
                found.append(p)
        except (psutil.Error, AttributeError):
            continue
    return found


def reap_orphaned_engines() -> list[int]:
    """Kills :func:`orphaned_engines` (left by a killed earlier run) and logs it."""
    import psutil

    reaped = []
    for p in orphaned_engines():
        try:
            p.kill()
            reaped.append(p.pid)
        except psutil.Error:
            continue
    if reaped:
        log.warning(
            "killed %d orphaned vLLM engine process(es) left by an earlier run that was "
            "killed: pids %s",
            len(reaped),
            reaped,
        )
    return reaped


def init_ray(cluster: dict) -> None:
    """Starts a local Ray (``address: null``) or joins one; no-op when already connected."""
    import ray

    if ray.is_initialized():
        return
    env = worker_env()
    env.update({str(k): str(v) for k, v in (cluster.get("env") or {}).items()})
    address = cluster.get("address") or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": bool(cluster.get("log_to_driver", False)),
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        reap_orphaned_engines()  # this node's own leftovers, before new engines need memory
        dashboard = bool(cluster.get("dashboard", False))
        with _no_usage_stats_server(skip=not dashboard):
            ray.init(
                num_cpus=cluster.get("num_cpus"),
                num_gpus=cluster.get("num_gpus"),
                include_dashboard=dashboard,
                dashboard_host=cluster.get("dashboard_host", "127.0.0.1"),
                **kwargs,
            )
    configure_logging()  # Ray's init re-configures logging
    res = ray.cluster_resources()
    log.info(
        "Ray: %g CPU, %g GPU; engine and worker logs under the Ray session folder "
        "(/tmp/ray/session_latest/logs on the head node)",
        res.get("CPU", 0),
        res.get("GPU", 0),
    )


def check_capacity(specs: list, cluster_resources: dict) -> None:
    """Refuses engines that cannot be placed on this cluster, before any of them starts."""
    from moaa_cluster.errors import ConfigError

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


def ray_session() -> dict:
    """Where this process's Ray lives: session directory (logs) and GCS address."""
    import ray

    info: dict = {"gcs_address": ray.get_runtime_context().gcs_address}
    node = getattr(ray._private.worker, "_global_node", None)  # no public API for the dir
    if node is not None:
        info["session_dir"] = node.get_session_dir_path()
    return info


def placement_groups_in_use(name_parts: list[str] | None = None) -> list[str]:
    """Placement groups that still hold (or wait for) resources, by name.

    Args:
        name_parts: Only groups whose name contains one of these (Serve names a replica's
            group after the replica, ``SERVE_REPLICA::<app>#<deployment>#<id>``); ``None``
            counts every group in the cluster.
    """
    from ray.util import placement_group_table

    names = []
    for pg_id, pg in placement_group_table().items():
        if pg.get("state") == "REMOVED":
            continue
        name = pg.get("name") or pg_id
        if name_parts is None or any(part in name for part in name_parts):
            names.append(name)
    return sorted(names)


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

    from moaa_cluster.engines.serve_llm import app_name, stop_engines

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
    left = placement_groups_in_use(scope)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = placement_groups_in_use(scope)
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
    from moaa_cluster.engines import planner

    vllm = engine_specs(specs)
    if vllm:
        planner.check_fits(vllm, planner.inventory_from_cluster(cluster))


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

        from moaa_cluster.engines.serve_llm import app_name, start_engines, stop_engines
        from moaa_cluster.engines.watch import EngineWatcher

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
    init_ray(cluster)
    if report is not None:
        report.update({**ray_session(), "started_by_run": owns_ray})
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
