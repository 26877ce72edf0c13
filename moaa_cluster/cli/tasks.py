"""The Hydra tasks of ``moaa``: each builds its objects (``moaa_cluster.build``) and calls.

:func:`task` turns a body ``(cfg, opts)`` into the ``fn(cfg)`` Hydra runs, with the
``RunOptions`` built once from the config. Heavy imports happen inside the functions, so
importing this module (``moaa --help``) stays instant.
"""

from __future__ import annotations


def manifest_extra(cfg) -> dict:
    """What every task's manifest records of its invocation: the resolved config and, for a
    rehearsal, what stood in for what (also under ``config.rehearsal``)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    return {"config": config, "rehearsal": config.get("rehearsal") or None}


# tasks whose run directory may be an object-store URI (output_dir=s3://...): runs.storage.
# `pipeline` too: its engines copy the trained checkpoints to their nodes (runs.model_cache)
URI_TASKS = ("synth", "prefs", "sample", "judge_eval", "eval", "train-sft", "train-dpo", "pipeline")


def run_options(cfg):
    """The ``RunOptions`` of a task, once, from its config: ``output_dir``, ``overwrite``,
    ``limit`` (else its dataset's own ``limit``: synth, prefs, sample), ``progress``,
    ``keep_engines``, the cluster, and what every manifest records of the invocation."""
    from omegaconf import OmegaConf

    from moaa_cluster.errors import ConfigError
    from moaa_cluster.runs.options import RunOptions
    from moaa_cluster.runs.storage import is_uri

    limit = cfg.get("limit")
    if is_uri(str(cfg.output_dir)) and cfg.get("task") not in URI_TASKS:
        raise ConfigError(
            f"output_dir {cfg.output_dir}: object storage is supported for "
            f"{', '.join(URI_TASKS)} runs; `{cfg.get('task')}` needs a local or shared path"
        )
    if limit is None and "dataset" in cfg:
        limit = cfg.dataset.get("limit")
    return RunOptions(
        run_dir=str(cfg.output_dir),
        cluster=OmegaConf.to_container(cfg.cluster, resolve=True),
        overwrite=bool(cfg.get("overwrite", False)),
        limit=limit,
        progress=bool(cfg.get("progress", True)),
        keep_engines=bool(cfg.get("keep_engines", False)),
        manifest_extra=manifest_extra(cfg),
    )


def task(body=None, *, configure=None):
    """A Hydra task's function ``fn(cfg)`` from ``body(cfg, opts)``: offline with the cluster's
    env, the task's logging, and the run options built once (:func:`run_options`), after
    ``configure(cfg)`` when given (a task that sets config keys its ``output_dir`` uses)."""

    def wrap(body):
        def run(cfg) -> None:
            from moaa_cluster import runtime

            runtime.set_offline(cfg.cluster.get("env"))
            runtime.configure_logging()
            if configure is not None:
                configure(cfg)
            body(cfg, run_options(cfg))

        run.__name__ = run.__qualname__ = body.__name__
        run.__doc__ = body.__doc__
        return run

    return wrap if body is None else wrap(body)


@task
def synth_task(cfg, opts) -> None:
    from moaa_cluster import build
    from moaa_cluster.pipeline.synth import synthesize

    mix, specs, defaults = build.mixture(cfg.mixture)
    synthesize(build.sources(cfg.dataset), mix, specs, build.synth_settings(cfg, defaults), opts)


def _prefs(cfg, opts, sample_only: bool) -> None:
    from moaa_cluster import build
    from moaa_cluster.pipeline.prefs import SAMPLER, make_preferences

    judge, specs = (None, {}) if sample_only else build.judge(cfg.judge)
    specs[SAMPLER] = build.model_specs({SAMPLER: cfg.sampler})[SAMPLER]
    make_preferences(build.sources(cfg.dataset), judge, specs, build.prefs_settings(cfg), opts)


@task
def prefs_task(cfg, opts) -> None:
    _prefs(cfg, opts, sample_only=False)


@task
def sample_task(cfg, opts) -> None:
    _prefs(cfg, opts, sample_only=True)


@task
def judge_eval_task(cfg, opts) -> None:
    from moaa_cluster import build
    from moaa_cluster.pipeline.judge_eval import evaluate_judges

    judge, specs = build.judge(cfg.judge)
    judges = [judge]
    if cfg.single_judges:
        judges += [judge.single(m) for m in judge.models]
    evaluate_judges(
        str(cfg.pairs),  # a local path or an object-storage URI
        judges,
        specs,
        opts,
        batch_size=max(1, int(cfg.cluster.batch_size) // 2),
        workers=int(cfg.cluster.workers),
    )


def _single_judge_label(cfg) -> None:
    """``moaa eval single_judge=K``: ``judge_label`` becomes ``single-K`` (``run_name`` and
    ``output_dir`` follow it) unless the command line set it."""
    if cfg.single_judge is not None and not _overridden("judge_label"):
        cfg.judge_label = f"single-{cfg.single_judge}"


@task(configure=_single_judge_label)
def eval_task(cfg, opts) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.errors import ConfigError
    from moaa_cluster.evaluation.answers import question_sources
    from moaa_cluster.evaluation.settings import Baseline
    from moaa_cluster.pipeline.evaluate import evaluate

    if OmegaConf.is_missing(cfg, "questions"):
        raise ConfigError("questions=<file> (or a list [a,b]) is required: the questions to answer")
    judge, judge_specs = build.eval_judge(cfg)
    baseline_model = cfg.get("baseline_model")
    plain = OmegaConf.to_container(cfg, resolve=True)
    evaluate(
        question_sources(plain["questions"]),
        build.model_specs({"model": cfg.model})["model"],
        judge,
        judge_specs,
        Baseline(
            answers=plain["baseline_answers"],
            model=None
            if baseline_model is None
            else build.model_specs({"baseline": baseline_model})["baseline"],
            name=cfg.baseline_name,
        ),
        build.eval_settings(cfg),
        opts,
    )


def _overridden(key: str) -> bool:
    """Whether the command line set ``key`` (Hydra keeps the overrides it was given)."""
    from hydra.core.hydra_config import HydraConfig

    return any(o.lstrip("+~").split("=", 1)[0] == key for o in HydraConfig.get().overrides.task)


@task
def train_task(cfg, opts) -> None:
    from dataclasses import replace

    from moaa_cluster import build
    from moaa_cluster.training.ray_train import fit

    settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
    # the trainer's progress and loss lines
    opts = replace(opts, cluster={**opts.cluster, "log_to_driver": True})
    fit(settings.kind, cfg.data, settings, build.train_scaling(cfg.cluster), opts)


@task
def pipeline_task(cfg, opts) -> None:
    from moaa_cluster import build
    from moaa_cluster.end_to_end import run_pipeline

    run_pipeline(build.pipeline(cfg), opts, from_stage=cfg.from_stage)


def plan_task(cfg) -> None:
    import json
    import os

    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.engines import placement
    from moaa_cluster.engines.throughput import ThroughputTable
    from moaa_cluster.engines.workload import prefs_workload, synth_workload
    from moaa_cluster.errors import ConfigError

    c = OmegaConf.to_container(cfg, resolve=True)
    if c["format"] not in ("table", "json"):
        raise ConfigError(f"format must be table or json, got {c['format']!r}")
    inv = dict(c["inventory"])
    if not inv.get("gpus_per_node") and inv.get("cpu_memory_gb") is None:  # CPU: this host's RAM
        inv["cpu_memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    inventory = placement.Inventory.from_dict(inv)
    settings = placement.PlanSettings.from_dict(c["settings"])
    table = ThroughputTable.from_dict(c["throughput"], c.get("measured"))
    out = c.get("output_tokens")
    note = (
        f"{out:g} generated tokens per call"
        if out
        else "generated tokens = max_tokens, an upper bound"
    )
    plans = []
    for stage in c["stages"]:
        if stage == "synth":
            mix, specs, defaults = build.mixture(cfg.mixture)
            work = synth_workload(f"synth {cfg.mixture.name}", mix, defaults, c["turns"], out)
        elif stage == "prefs":
            judge, specs = build.judge(cfg.judge)
            specs["sampler"] = build.model_specs({"sampler": cfg.sampler})["sampler"]
            pc = c["prefs"]
            work = prefs_workload(
                f"prefs {cfg.judge.name}",
                judge,
                "sampler",
                pc["num_candidates"],
                pc["max_tokens"],
                pc["plan"],
                out,
            )
        else:
            raise ConfigError(f"stages: unknown stage {stage!r}; known: synth, prefs")
        specs = {k: placement.fill_from_checkpoint(v) for k, v in specs.items()}
        per_cpu = c.get("orchestration_calls_per_cpu")
        costing = placement.Costing(
            table, int(c["rows"]), note, float(per_cpu) if per_cpu else None
        )
        plans.append(placement.plan(work, specs, inventory, settings, costing))
    if c["format"] == "json":
        print(json.dumps([p.to_dict() for p in plans], indent=2))
    else:
        print("\n\n".join(placement.format_plan(p) for p in plans))
