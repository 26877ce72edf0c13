"""``moaa pipeline``: synth -> SFT -> sample + judge -> DPO -> eval -> report in one run dir.

Each stage writes its own subdirectory with its own manifest; a rerun skips every stage whose
manifest says it is complete (and resumes the first one that is not), ``from_stage`` redoes
one stage and all later ones. The engines stay up between stages that share models (the
embedded judge's models are the stage-1 teachers), and all of them stop at the end.

The run directory may be on object storage (``output_dir=s3://...``, ``runs.storage``): every
stage writes there, and the trained checkpoints (``sft/model``, ``dpo/model``) are served from
it: each engine copies its checkpoint to a node-local cache first
(``engines.serve_llm.model_source``), and DPO's trainers copy the SFT model the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.settings import Baseline
from moaa_cluster.runs import storage
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.options import RunOptions

log = logging.getLogger(__name__)

STAGES = ("synth", "sft", "prefs", "dpo", "eval")
EVAL_SFT = "eval_sft"  # the eval stage's run of the SFT model, beside eval/ (the final model)


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
    # the evaluation's judge (conf/judge via `judge@eval_judge`): by default not the stage-2
    # reward model, whose preferences the DPO model was trained on; None: the stage-2 judge
    eval_judge: object = None
    eval_judge_specs: dict | None = None
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


def is_complete(stage: str, stage_dir: Path | str) -> bool:
    """Whether a stage's directory (local or a URI) holds a finished result the next stage
    can use."""
    m = Manifest.load(stage_dir)
    if m is None or not m.complete:
        return False
    return stage not in ("sft", "dpo") or storage.exists(
        storage.join(model_dir(stage_dir), "config.json")
    )


def model_dir(stage_dir: Path | str) -> str:
    """The checkpoint a training stage exports: ``<stage_dir>/model``, as a string."""
    return str(storage.join(stage_dir, "model"))


def trained_spec(base: ModelSpec, stage_dir: Path | str, suffix: str) -> ModelSpec:
    """The base model's engine spec pointed at a trained checkpoint, served by its own engine
    (never by an engine the base shares, as in a rehearsal)."""
    return replace(
        base, name=f"{base.name}-{suffix}", path=model_dir(stage_dir), hub_id=None, engine=None
    )


def run_pipeline(parts: PipelineParts, opts: RunOptions, from_stage: str | None = None) -> dict:
    """Runs the stages that are not complete yet into ``opts.run_dir``; returns the pipeline
    manifest.

    ``opts.overwrite`` deletes the whole run directory first; ``opts.manifest_extra`` (the
    resolved ``config`` and the ``rehearsal`` record) goes into the pipeline's manifest, and
    the rehearsal record into its report. Each stage writes ``<run_dir>/<stage>``; the run
    directory may be an object-store URI.
    """
    stages = check_stages(parts.stages)
    if from_stage is not None and from_stage not in stages:
        raise ConfigError(f"from_stage must be one of {list(stages)}, got {from_stage!r}")
    run = StageRun(parts, replace(opts, run_dir=absolute(opts.run_dir)), stages)
    run.prepare(from_stage)
    preflight(parts, opts.cluster, run.prefs_specs, run.eval_specs)
    t_start = time.monotonic()
    try:
        run.run_stages()
    finally:
        run.stop_all()
    return _finish(run, t_start)


def absolute(run_dir: Path | str) -> Path | str:
    """A URI as it is; a local path made absolute (Ray Train workers and engine replicas do
    not share the driver's working directory)."""
    return run_dir if storage.is_uri(run_dir) else Path(run_dir).resolve()


@dataclass
class StageRun:
    """One pipeline run: its stages and their directories, the engines and times so far.

    Attributes:
        parts: The stages' objects (``build.pipeline``).
        opts: The pipeline's run options, ``run_dir`` absolute (or a URI).
        stages: The recipe's stages, checked (``check_stages``).
        started: Engines running now, by model name (kept between stages that share them).
        timings: Wall seconds of each stage run now (skipped ones have none).
        skipped: Stages found complete and not run again.
        sft_spec, dpo_spec: The engine specs of the trained checkpoints (``trained_spec``).
        final: The model the recipe delivers (DPO, or SFT in an SFT-only recipe).
        prefs_specs: The prefs stage's engines (judge models + the SFT sampler), or None.
        eval_specs: The eval stage's engines (the eval judge's models, the final and the base
            model, and the SFT model when the recipe also has DPO: both are evaluated).
    """

    parts: PipelineParts
    opts: RunOptions
    stages: tuple[str, ...]
    started: dict[str, ModelSpec] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    sft_spec: ModelSpec = field(init=False)
    dpo_spec: ModelSpec = field(init=False)
    final: ModelSpec = field(init=False)
    prefs_specs: dict | None = field(init=False)
    eval_specs: dict = field(init=False)

    def __post_init__(self) -> None:
        from moaa_cluster.pipeline.prefs import SAMPLER

        base = self.parts.base
        self.sft_spec = trained_spec(base, self.dir("sft"), "sft")
        self.dpo_spec = trained_spec(base, self.dir("dpo"), "dpo")
        self.final = self.dpo_spec if "dpo" in self.stages else self.sft_spec
        judges = self.parts.judge_specs
        self.prefs_specs = {**judges, SAMPLER: self.sft_spec} if "prefs" in self.stages else None
        eval_judges = self.parts.eval_judge_specs or judges
        self.eval_specs = {**eval_judges, "model": self.final, "baseline": base}
        if "dpo" in self.stages:  # base -> SFT -> DPO: the SFT model is evaluated too
            self.eval_specs["sft"] = self.sft_spec

    def dir(self, stage: str) -> Path | str:
        return storage.join(self.opts.run_dir, stage)

    def stage_opts(self, stage: str, limit: int | None = None) -> RunOptions:
        """A stage's run options: its own directory, engines kept for the next stage."""
        return RunOptions(
            run_dir=self.dir(stage),
            cluster=self.opts.cluster,
            limit=limit,
            progress=self.opts.progress,
            keep_engines=True,
        )

    def prepare(self, from_stage: str | None) -> None:
        """Readies the run directory: deleted first with ``overwrite``, ``from_stage`` and the
        stages after it deleted to be redone."""
        from moaa_cluster.runs.files import check_writable

        run_dir = self.opts.run_dir
        if self.opts.overwrite:
            storage.remove(run_dir)  # nothing when it does not exist
        check_writable(run_dir)
        if from_stage is not None:
            for stage in STAGES[STAGES.index(from_stage) :]:
                for d in (self.dir(stage), self.dir(EVAL_SFT) if stage == "eval" else None):
                    if d is not None:
                        storage.remove(d)

    def run_stages(self) -> None:
        """Every stage of the recipe in order, each skipped when it is complete."""
        from moaa_cluster.engines.serve_llm import stop_engines
        from moaa_cluster.pipeline.prefs import make_preferences
        from moaa_cluster.pipeline.synth import synthesize
        from moaa_cluster.training.ray_train import fit

        p = self.parts
        synth_opts = self.stage_opts("synth", p.synth_limit)
        self.stage(
            "synth",
            lambda: synthesize(
                p.synth_sources, p.mixture, p.synth_specs, p.synth_settings, synth_opts
            ),
            p.synth_specs,
        )
        self.stage(
            "sft",
            lambda: fit(
                "sft", self.dir("synth"), p.sft_settings, p.scaling, self.stage_opts("sft")
            ),
        )
        prefs_opts = self.stage_opts("prefs", p.prefs_limit)
        self.stage(
            "prefs",
            lambda: make_preferences(
                p.prefs_sources, p.judge, self.prefs_specs, p.prefs_settings, prefs_opts
            ),
            self.prefs_specs,
        )
        # the SFT sampler is done: free its GPU memory for DPO (on CPU it stays up: the eval
        # stage evaluates the SFT model too, and a CPU engine start costs half a minute)
        if self.sft_spec.name in self.started and p.scaling.use_gpu:
            stop_engines([self.started.pop(self.sft_spec.name)])
        dpo_settings = replace(p.dpo_settings, base_model=model_dir(self.dir("sft")))
        self.stage(
            "dpo",
            lambda: fit("dpo", self.dir("prefs"), dpo_settings, p.scaling, self.stage_opts("dpo")),
        )
        self.stage("eval", self._evaluate_models, self.eval_specs)

    def _evaluate_models(self) -> None:
        """The SFT model (when the recipe has DPO) into ``eval_sft/``, then the final model into
        ``eval/``, each against the base model's answers, generated once."""
        p = self.parts
        judges = p.eval_judge_specs or p.judge_specs
        baseline = Baseline(model=p.base)
        if "dpo" in self.stages:
            # only this evaluation's engines stay up: every engine holds CPUs, and Ray Data
            # needs some left to run at all (four engines on the local cluster left none)
            self._swap_engines({**judges, "model": self.sft_spec, "baseline": p.base})
            _evaluate(p, self.sft_spec, baseline, self.stage_opts(EVAL_SFT, p.eval_limit))
            baseline = Baseline(
                answers=str(storage.join(self.dir(EVAL_SFT), "baseline_answers.parquet")),
                name=p.base.name,
            )
        engines = {**judges, "model": self.final}
        self._swap_engines(engines if baseline.model is None else {**engines, "baseline": p.base})
        _evaluate(p, self.final, baseline, self.stage_opts("eval", p.eval_limit))

    def stage(self, name: str, fn, engines: dict | None = None) -> None:
        """Runs one stage (``fn``) unless the recipe lacks it or it is complete.

        ``engines`` are the model specs the stage serves; engines kept from the last stage
        that this one does not use are stopped first.

        Raises:
            RuntimeError: The stage ran but its manifest does not say it is complete.
        """
        if name not in self.stages:
            return
        d = self.dir(name)
        if is_complete(name, d):
            self.skipped.append(name)
            print(f"== {name}: complete in {d}, skipped", flush=True)
            return
        n, total = self.stages.index(name) + 1, len(self.stages)
        print(f"== stage {n}/{total} {name}: started -> {d}", flush=True)
        self._swap_engines(engines)
        t0 = time.monotonic()
        fn()
        self.timings[name] = round(time.monotonic() - t0, 2)
        print(f"== stage {n}/{total} {name}: ended after {self.timings[name]:.0f} s", flush=True)
        if not is_complete(name, d):
            raise RuntimeError(
                f"stage {name} did not complete (see {storage.join(d, 'manifest.json')} and "
                f"{storage.join(d, 'rejects.jsonl')}); rerun the same command to resume it"
            )

    def _swap_engines(self, engines: dict | None) -> None:
        from moaa_cluster.engines.serve_llm import stop_engines

        # engines kept from the last stage that this one does not use are stopped first;
        # a training stage on GPUs frees every engine (the trainers need the devices)
        if engines is not None or self.parts.scaling.use_gpu:
            # by engine: a model whose engine the next stage still uses keeps it running
            wanted = {s.engine_name for s in (engines or {}).values()}
            drop = [s for s in self.started.values() if s.engine_name not in wanted]
            if drop:
                stop_engines(drop)
                for s in drop:
                    self.started.pop(s.name)
        self.started.update({s.name: s for s in (engines or {}).values()})

    def stop_all(self) -> None:
        """Stops every engine still running (the pipeline's end, or a failed stage)."""
        from moaa_cluster.engines.serve_llm import stop_engines

        if self.started:
            stop_engines(list(self.started.values()))


def _finish(run: StageRun, t_start: float) -> dict:
    """The report and the pipeline's manifest after the stages; prints where each stage is."""
    run_dir, stages = run.opts.run_dir, run.stages
    config = run.opts.manifest_extra.get("config")
    rehearsal = run.opts.manifest_extra.get("rehearsal") or None
    report = _report(run_dir, run.opts.cluster, rehearsal)
    stage_manifests = {s: Manifest.load(run.dir(s)) for s in stages}
    manifest = Manifest(
        task="pipeline",
        status="complete",
        timings_s={**run.timings, "total": time.monotonic() - t_start},
        details={
            "stages": {s: str(run.dir(s)) for s in stages},
            "skipped": run.skipped,
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
        print(f"  {s:<6} {run.timings.get(s, 'skipped')!s:>10} s  {run.dir(s)}", flush=True)
    return manifest


def preflight(
    parts: PipelineParts, cluster: dict, prefs_specs: dict | None, eval_specs: dict
) -> None:
    """Every stage's engines checked against the cluster before the first one starts.

    Stage 1 may run layer by layer when its mixture does not fit at once
    (``synth.execution``); the judge stages need their engines resident together. A
    config that cannot run fails here in seconds, not after hours of stage 1.
    """
    from moaa_cluster.engines import host as engine_host
    from moaa_cluster.pipeline.layered import plan_passes

    plan_passes(
        parts.mixture,
        engine_host.preflight_capacity(cluster, parts.synth_specs),
        parts.synth_settings.execution,
        max_turns=1,
    )
    for label, specs in (("prefs", prefs_specs), ("eval", eval_specs)):
        if specs is None:  # a recipe without that stage
            continue
        try:
            engine_host.preflight(cluster, list(specs.values()))
        except ConfigError as exc:
            raise ConfigError(f"pipeline stage {label}: {exc}") from exc


def _evaluate(parts: PipelineParts, model: ModelSpec, baseline: Baseline, opts: RunOptions):
    """One trained model against the base model's answers on held-out instructions, with the
    pipeline's evaluation judge."""
    from moaa_cluster.pipeline.evaluate import evaluate

    return evaluate(
        parts.eval_sources,
        model,
        parts.eval_judge or parts.judge,
        parts.eval_judge_specs or parts.judge_specs,
        baseline,
        parts.eval_settings,
        opts,
    )


def _report(run_dir: Path | str, cluster: dict, rehearsal: dict | None = None) -> Path | str | None:
    """``report.md`` and plots over every stage, next to a run on object storage too."""
    from moaa_cluster.reporting import report_remote, write_report

    try:  # a failure here never fails the pipeline
        if storage.is_uri(run_dir):
            return report_remote(str(run_dir), cluster=cluster, rehearsal=rehearsal)
        return write_report(run_dir, cluster=cluster, rehearsal=rehearsal)
    except Exception as exc:  # the stages' outputs stand; say why the report is missing
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None
