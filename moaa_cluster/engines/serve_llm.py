"""Hosts vLLM engines as Ray Serve LLM deployments: one per model, shared by all its roles.

A model that proposes and aggregates (or answers several turns) is loaded once; every mixture
step reaches it through a deployment handle. Nothing is exposed over HTTP: Serve's proxy is
disabled, so the engines are reachable only from inside the Ray cluster.
"""

from __future__ import annotations

import logging
import time

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.runtime import configure_logging, worker_env

log = logging.getLogger(__name__)


def app_name(spec: ModelSpec) -> str:
    """Serve app of the spec's engine: models sharing an engine (a rehearsal) share it."""
    return f"moaa-{spec.engine_name}"


def deployment_name(spec: ModelSpec) -> str:
    return f"moaa-{spec.engine_name}-engine"


def engine_args(spec: ModelSpec) -> dict:
    """The vLLM engine arguments a spec asks for (its ``engine_kwargs`` win)."""
    args = {
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "trust_remote_code": spec.trust_remote_code,
        **spec.engine_kwargs,
    }
    if spec.revision:
        args.setdefault("revision", spec.revision)
    return args


def bundles(spec: ModelSpec) -> list[dict]:
    """One replica's placement-group bundles: a GPU per tensor-parallel rank, or CPUs."""
    if spec.accelerator_type:
        return [{"GPU": 1, "CPU": 1}] * spec.tensor_parallel_size
    return [{"CPU": spec.cpus_per_replica}]


FETCH_CALLBACK = "moaa_cluster.engines.fetch_checkpoint.FetchCheckpoint"


def model_source(spec: ModelSpec) -> tuple[str, dict | None]:
    """What the engine loads, and the Serve LLM callback that puts it there first.

    A local path or hub id is loaded as it is. A checkpoint on object storage
    (``path=s3://...``) is copied on every node of the engine, before vLLM starts there, to a
    node-local directory named after the URI (``runs.model_cache``), which the engine loads:
    the path is computed here, so every node needs the same cache directory
    (``MOAA_REMOTE_MODELS_DIR``, default ``~/.cache/moaa-cluster/remote-models`` as the
    driver expands it).
    """
    from moaa_cluster.runs.model_cache import cache_dir
    from moaa_cluster.runs.storage import is_uri

    if not spec.path or not is_uri(spec.path):
        return spec.source, None
    dest = str(cache_dir(spec.path))
    return dest, {
        "callback_class": FETCH_CALLBACK,
        "callback_kwargs": {"uri": spec.path, "dest": dest},
    }


def llm_config(spec: ModelSpec):
    """Translates a model spec into a Ray Serve ``LLMConfig`` (vLLM engine)."""
    from ray.serve.llm import LLMConfig, ModelLoadingConfig

    engine_kwargs = engine_args(spec)
    if spec.chat_template:
        engine_kwargs.setdefault("chat_template", spec.chat_template)
    # A deployment with its own runtime_env does not get the job's (Serve only copies the
    # working_dir), so the offline settings and the cluster's env are passed here in full.
    env = worker_env()
    source, callback = model_source(spec)
    return LLMConfig(
        model_loading_config=ModelLoadingConfig(model_id=spec.engine_name, model_source=source),
        **({"callback_config": callback} if callback else {}),
        accelerator_type=spec.accelerator_type,
        placement_group_config={"bundles": bundles(spec)},
        deployment_config={
            "autoscaling_config": {"min_replicas": spec.replicas, "max_replicas": spec.replicas},
            # rows of a batch arrive together; keep them all in flight
            "max_ongoing_requests": 256,
        },
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": env} if env else None,
        log_engine_metrics=False,
    )


def start_engines(specs: list[ModelSpec]) -> dict[str, float]:
    """Deploys every vLLM-backed spec at once and waits until all are ready.

    Returns:
        Seconds from the call until all engines answered ready, keyed ``"all"``.
    """
    from ray import serve
    from ray.serve.api import RunTarget
    from ray.serve.llm import build_llm_deployment

    # one engine per served model, however many roles or keys point at it
    vllm_specs = list({app_name(s): s for s in specs if s.backend == "vllm"}.values())
    t0 = time.monotonic()
    if vllm_specs:
        serve.start(proxy_location="Disabled")
        configure_logging()  # Serve and Serve LLM set their loggers to INFO on start
        # Engines already running under the same name (an earlier run in this cluster) are
        # reused: redeploying would restart them for nothing.
        running = {
            name for name, app in serve.status().applications.items() if app.status == "RUNNING"
        }
        vllm_specs = [s for s in vllm_specs if app_name(s) not in running]
    if not vllm_specs:
        return {"all": time.monotonic() - t0}
    targets = [
        RunTarget(
            target=build_llm_deployment(
                llm_config(spec), override_serve_options={"name": deployment_name(spec)}
            ),
            name=app_name(spec),
            route_prefix=None,
        )
        for spec in vllm_specs
    ]
    log.info(
        "starting %d engine(s): %s", len(targets), ", ".join(s.engine_name for s in vllm_specs)
    )
    serve.run_many(targets)
    elapsed = time.monotonic() - t0
    log.info("engines ready in %.1f s", elapsed)
    return {"all": elapsed}


def stop_engines(specs: list[ModelSpec]) -> None:
    """Deletes the apps started by :func:`start_engines` (placement groups are released).

    Without a Ray session there is nothing to stop: return before Serve's API starts a
    default one (with the machine's CPU count, not the cluster config's), which the run's own
    ``init_ray`` would then join with too few CPUs for its engines.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    for spec in {app_name(s): s for s in specs if s.backend == "vllm"}.values():
        if spec.backend == "vllm":
            try:
                serve.delete(app_name(spec))
            except Exception as exc:  # shutdown must not mask the run's own outcome
                log.warning("could not delete engine app %s: %s", app_name(spec), exc)
