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
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",  # engine logs stay in Ray's log folder; override to debug
}


def set_offline(env_overrides: dict | None = None) -> None:
    """Turns hub access and telemetry off unless the user's environment already decided."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in (env_overrides or {}).items():
        os.environ[str(key)] = str(value)


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


def init_ray(cluster: dict) -> None:
    """Starts a local Ray (``address: null``) or joins one; no-op when already connected."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in OFFLINE_ENV if k in os.environ}
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
        ray.init(
            num_cpus=cluster.get("num_cpus"),
            num_gpus=cluster.get("num_gpus"),
            include_dashboard=bool(cluster.get("dashboard", False)),
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
    from moaa_cluster.engines.spec import ConfigError

    gpus = float(cluster_resources.get("GPU", 0))
    for spec in specs:
        if spec.backend != "vllm":
            continue
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


@contextmanager
def engines(
    cluster: dict, specs: list, *, keep: bool = False, timings: dict | None = None
) -> Iterator[None]:
    """Joins Ray, refuses what cannot be placed, starts the engines, and stops them after.

    With ``keep`` the engines stay up for the next command on the same cluster.
    """
    import ray

    from moaa_cluster.engines.serve_llm import start_engines, stop_engines

    init_ray(cluster)
    check_capacity(specs, ray.cluster_resources())
    t0 = time.monotonic()
    start_engines(specs)
    if timings is not None:
        timings["engine_start"] = time.monotonic() - t0
    try:
        yield
    finally:
        if not keep:
            stop_engines(specs)
