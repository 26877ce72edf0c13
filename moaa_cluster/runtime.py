"""Process-wide setup shared by every task: offline mode, logging, and joining Ray."""

from __future__ import annotations

import logging
import os
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
    (tests/integration/test_a_cli_sweep_offline.py).
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
