"""``moaa pipeline``: synth -> SFT -> sample + judge -> DPO -> eval -> report in one run dir.

Each stage writes its own subdirectory with its own manifest; a rerun skips every stage whose
manifest says it is complete (and resumes the first one that is not), ``from_stage`` redoes
one stage and all later ones. The engines stay up between stages that share models (the
embedded judge's models are the stage-1 teachers), and all of them stop at the end.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs.manifest import Manifest

log = logging.getLogger(__name__)

STAGES = ("synth", "sft", "prefs", "dpo", "eval")


@dataclass
class PipelineParts:
    """Everything the stages need, built from the config by ``build.pipeline``."""

    synth_sources: list
    mixture: object
    synth_specs: dict
    synth_settings: object
    synth_limit: int | None
    sft_settings: object
    dpo_settings: object
    scaling: object
    prefs_sources: list
    judge: object
    judge_specs: dict
    prefs_settings: object
    prefs_limit: int | None
    base: ModelSpec
    eval_sources: list
    eval_settings: object
    eval_limit: int | None
    # the recipe's stages, in order: all five (the paper's MoAA), or synth, sft, eval
    # (Table 4's self-improvement: SFT only)
    stages: tuple[str, ...] = STAGES


def check_stages(stages: tuple[str, ...]) -> tuple[str, ...]:
    """A recipe's stages: in pipeline order, synth and sft first, prefs and dpo together."""
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; known, in order: {list(STAGES)}")
    if list(stages) != [s for s in STAGES if s in stages] or len(set(stages)) != len(stages):
        raise ConfigError(f"stages must keep the pipeline order {list(STAGES)}, got {list(stages)}")
    if stages[:2] != ("synth", "sft"):
        raise ConfigError(f"stages must start with synth, sft; got {list(stages)}")
    if ("prefs" in stages) != ("dpo" in stages):
        raise ConfigError(
            f"stages: prefs and dpo go together (DPO trains on prefs' pairs); got {list(stages)}"
        )
    return stages


def is_complete(stage: str, stage_dir: Path) -> bool:
    """Whether a stage's directory holds a finished result the next stage can use."""
    m = Manifest.load(stage_dir)
    if m is None or not m.complete:
        return False
    return stage not in ("sft", "dpo") or (stage_dir / "model" / "config.json").exists()


def trained_spec(base: ModelSpec, stage_dir: Path, suffix: str) -> ModelSpec:
    """The base model's engine spec pointed at a trained checkpoint, served by its own engine
    (never by an engine the base shares, as in a rehearsal)."""
    return replace(
        base, name=f"{base.name}-{suffix}", path=str(stage_dir / "model"), hub_id=None, engine=None
    )


def run_pipeline(
    parts: PipelineParts,
    run_dir: Path,
    cluster: dict,
    *,
    from_stage: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    config: dict | None = None,
) -> dict:
    """Runs the stages that are not complete yet; returns the pipeline manifest."""
    from moaa_cluster.engines.serve_llm import stop_engines
    from moaa_cluster.pipeline.prefs import SAMPLER, make_preferences
    from moaa_cluster.pipeline.synth import synthesize
    from moaa_cluster.runs.files import check_writable
    from moaa_cluster.training.ray_train import fit

    stages = check_stages(parts.stages)
    if from_stage is not None and from_stage not in stages:
        raise ConfigError(f"from_stage must be one of {list(stages)}, got {from_stage!r}")
    # absolute: Ray Train workers and engine replicas do not share the driver's cwd
    run_dir = Path(run_dir).resolve()
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    check_writable(run_dir)
    dirs = {s: run_dir / s for s in STAGES}
    if from_stage is not None:
        for stage in STAGES[STAGES.index(from_stage) :]:
            if dirs[stage].exists():
                shutil.rmtree(dirs[stage])
    sft_spec = trained_spec(parts.base, dirs["sft"], "sft")
    dpo_spec = trained_spec(parts.base, dirs["dpo"], "dpo")
    started: dict[str, ModelSpec] = {}
    timings: dict[str, float] = {}
    skipped: list[str] = []

    final = dpo_spec if "dpo" in stages else sft_spec  # the model the recipe delivers
    prefs_specs = {**parts.judge_specs, SAMPLER: sft_spec} if "prefs" in stages else None
    eval_specs = {**parts.judge_specs, "model": final, "baseline": parts.base}
    preflight(parts, cluster, prefs_specs, eval_specs)

    def stage(name: str, fn, engines: dict | None = None) -> None:
        if name not in stages:
            return
        if is_complete(name, dirs[name]):
            skipped.append(name)
            print(f"== {name}: complete in {dirs[name]}, skipped", flush=True)
            return
        print(f"== {name} -> {dirs[name]}", flush=True)
        # engines kept from the last stage that this one does not use are stopped first;
        # a training stage on GPUs frees every engine (the trainers need the devices)
        if engines is not None or parts.scaling.use_gpu:
            # by engine: a model whose engine the next stage still uses keeps it running
            wanted = {s.engine_name for s in (engines or {}).values()}
            drop = [s for s in started.values() if s.engine_name not in wanted]
            if drop:
                stop_engines(drop)
                for s in drop:
                    started.pop(s.name)
        started.update({s.name: s for s in (engines or {}).values()})
        t0 = time.monotonic()
        fn()
        timings[name] = round(time.monotonic() - t0, 2)
        if not is_complete(name, dirs[name]):
            raise RuntimeError(
                f"stage {name} did not complete (see {dirs[name] / 'manifest.json'} and "
                f"{dirs[name] / 'rejects.jsonl'}); rerun the same command to resume it"
            )

    t_start = time.monotonic()
    try:
        stage(
            "synth",
            lambda: synthesize(
                parts.synth_sources,
                parts.mixture,
                parts.synth_specs,
                parts.synth_settings,
                dirs["synth"],
                cluster,
                limit=parts.synth_limit,
                progress=progress,
                keep_engines=True,
            ),
            parts.synth_specs,
        )
        stage(
            "sft",
            lambda: fit(
                "sft",
                dirs["synth"],
                parts.sft_settings,
                dirs["sft"],
                cluster,
                parts.scaling,
            ),
        )
        stage(
            "prefs",
            lambda: make_preferences(
                parts.prefs_sources,
                parts.judge,
                prefs_specs,
                parts.prefs_settings,
                dirs["prefs"],
                cluster,
                limit=parts.prefs_limit,
                progress=progress,
                keep_engines=True,
            ),
            prefs_specs,
        )
        if sft_spec.name in started:  # the SFT sampler is done: free its memory for DPO
            stop_engines([started.pop(sft_spec.name)])
        stage(
            "dpo",
            lambda: fit(
                "dpo",
                dirs["prefs"],
                replace(parts.dpo_settings, base_model=str(dirs["sft"] / "model")),
                dirs["dpo"],
                cluster,
                parts.scaling,
            ),
        )
        stage(
            "eval",
            lambda: _evaluate(parts, final, dirs["eval"], cluster, progress),
            eval_specs,
        )
    finally:
        if started:
            stop_engines(list(started.values()))
    rehearsal = (config or {}).get("rehearsal") or None
    report = _report(run_dir, cluster, rehearsal)
    stage_manifests = {s: Manifest.load(dirs[s]) for s in stages}
    manifest = Manifest(
        task="pipeline",
        status="complete",
        timings_s={**timings, "total": time.monotonic() - t_start},
        details={
            "stages": {s: str(dirs[s]) for s in stages},
            "skipped": skipped,
            "stage_timings_s": {s: m.timings_s if m else None for s, m in stage_manifests.items()},
            "eval": stage_manifests["eval"].details.get("summary")
            if stage_manifests.get("eval")
            else None,
            "report": str(report) if report else None,
            "rehearsal": rehearsal,
            "config": config,
        },
    ).save(run_dir)
    print(f"pipeline: done in {manifest['timings_s']['total']:.0f} s; {run_dir}", flush=True)
    for s in stages:
        print(f"  {s:<6} {timings.get(s, 'skipped')!s:>10} s  {dirs[s]}", flush=True)
    return manifest


def preflight(
    parts: PipelineParts, cluster: dict, prefs_specs: dict | None, eval_specs: dict
) -> None:
    """Every stage's engines checked against the cluster before the first one starts.

    Stage 1 may run layer by layer when its mixture does not fit at once
    (``synth.execution``); the judge stages need their engines resident together. A
    config that cannot run fails here in seconds, not after hours of stage 1.
    """
    from moaa_cluster import runtime
    from moaa_cluster.pipeline.layered import plan_passes, planner_fits

    plan_passes(
        parts.mixture,
        planner_fits(parts.synth_specs, cluster),
        parts.synth_settings.execution,
        max_turns=1,
    )
    for label, specs in (("prefs", prefs_specs), ("eval", eval_specs)):
        if specs is None:  # a recipe without that stage
            continue
        try:
            runtime.preflight(cluster, list(specs.values()))
        except ConfigError as exc:
            raise ConfigError(f"pipeline stage {label}: {exc}") from exc


def _evaluate(parts: PipelineParts, model: ModelSpec, out: Path, cluster: dict, progress: bool):
    """The recipe's final model (DPO, or SFT in an SFT-only recipe) against the base model on
    held-out instructions, with the pipeline's judge."""
    from moaa_cluster.pipeline.evaluate import evaluate

    return evaluate(
        parts.eval_sources,
        model,
        parts.judge,
        parts.judge_specs,
        out,
        cluster,
        baseline_model=parts.base,
        settings=parts.eval_settings,
        limit=parts.eval_limit,
        progress=progress,
        keep_engines=True,
    )


def _report(run_dir: Path, cluster: dict, rehearsal: dict | None = None) -> Path | None:
    """``report.md`` with plots over every stage; a failure here never fails the pipeline."""
    from moaa_cluster.evaluation.report import write_report

    try:
        return write_report(run_dir, cluster=cluster, rehearsal=rehearsal)
    except Exception as exc:  # the stages' outputs stand; say why the report is missing
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None
