"""The one place where configs become objects; everything below takes plain arguments."""

from __future__ import annotations

from moaa_cluster.data.sources import Source
from moaa_cluster.engines.spec import ModelSpec, spec_from_dict
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Agent, Mixture
from moaa_cluster.pipeline.synth import SynthSettings
from moaa_cluster.pipeline.synth_outputs import check_truncated_policy


def _plain(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def model_specs(models_cfg) -> dict[str, ModelSpec]:
    """``{key: ModelSpec}`` from a ``models:`` mapping of config group entries."""
    return {key: spec_from_dict(key, dict(value)) for key, value in _plain(models_cfg).items()}


def mixture(mixture_cfg) -> tuple[Mixture, dict[str, ModelSpec], dict]:
    """The mixture, its model specs and its sampling defaults from ``cfg.mixture``."""
    cfg = _plain(mixture_cfg)
    specs = model_specs(cfg.get("models", {}))
    layers = []
    for i, layer in enumerate(cfg.get("layers") or []):
        if not isinstance(layer, list):
            raise ConfigError(f"mixture layer {i + 1} must be a list of seats, got {layer!r}")
        seats = []
        for seat in layer:
            if isinstance(seat, str):
                seat = {"model": seat}
            if not isinstance(seat, dict):
                raise ConfigError(f"mixture layer {i + 1}: a seat must be a mapping, got {seat!r}")
            if seat.get("model") not in specs:
                raise ConfigError(
                    f"mixture layer {i + 1}: model {seat.get('model')!r} is not among the "
                    f"mixture's models {sorted(specs)}"
                )
            unknown = set(seat) - {"model", "sampling", "solo"}
            if unknown:
                raise ConfigError(f"mixture layer {i + 1}: unknown seat keys {sorted(unknown)}")
            seats.append(
                Agent(
                    model=seat["model"],
                    sampling=dict(seat.get("sampling") or {}),
                    solo=bool(seat.get("solo", False)),
                )
            )
        layers.append(tuple(seats))
    try:
        mix = Mixture(layers=tuple(layers))
    except ValueError as exc:
        raise ConfigError(f"mixture {cfg.get('name')}: {exc}") from exc
    return mix, specs, dict(cfg.get("sampling") or {})


def sources(dataset_cfg) -> list[Source]:
    cfg = _plain(dataset_cfg)
    out = []
    for name, src in (cfg.get("sources") or {}).items():
        unknown = set(src) - set(Source.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"dataset source {name}: unknown keys {sorted(unknown)}")
        out.append(Source(name=name, **{k: v for k, v in src.items() if k != "name"}))
    if not out:
        raise ConfigError("dataset has no sources")
    return out


def synth_settings(cfg, defaults: dict, section=None) -> SynthSettings:
    """Synth knobs from ``conf/synth.yaml``, or from ``section`` (the pipeline's ``synth:``)
    for the keys a pipeline sets per stage (``execution``, ``truncated``)."""
    own = section if section is not None else cfg
    return SynthSettings(
        defaults=defaults,
        seed=cfg.seed,
        batch_size=int(cfg.cluster.batch_size),
        workers=int(cfg.cluster.workers),
        record_prompts=bool(cfg.record_prompts),
        execution=str(own.get("execution") or "auto"),
        truncated=check_truncated_policy(str(own.get("truncated") or "exclude")),
        single_file=bool(cfg.get("single_file", True)),
    )


def judge(judge_cfg):
    """The judge spec and its model specs from ``cfg.judge``."""
    from moaa_cluster.judge.judge import JudgeSpec

    cfg = _plain(judge_cfg)
    specs = model_specs(cfg.get("models", {}))
    keys = [*cfg.get("proposers", []), cfg.get("aggregator"), cfg.get("criteria_model")]
    for key in keys:
        if key is not None and key not in specs:
            raise ConfigError(
                f"judge {cfg.get('name')}: model {key!r} is not among {sorted(specs)}"
            )
    if not cfg.get("proposers") or not cfg.get("aggregator"):
        raise ConfigError(f"judge {cfg.get('name')}: needs proposers and an aggregator")
    spec = JudgeSpec(
        name=cfg.get("name", "judge"),
        proposers=tuple(cfg["proposers"]),
        aggregator=cfg["aggregator"],
        criteria_model=cfg.get("criteria_model"),
        criteria_filtering=bool(cfg.get("criteria_filtering", True)),
        sampling=dict(cfg.get("sampling") or {}),
        verdict_sampling=dict(cfg.get("verdict_sampling") or {}),
        recover=bool(cfg.get("recover", True)),
        seed=cfg.get("seed"),
    )
    return spec, specs


def prefs_settings(cfg):
    from moaa_cluster.pipeline.prefs import PrefsSettings

    return PrefsSettings(
        num_candidates=int(cfg.num_candidates),
        sampling=_plain(cfg.sampling),
        plan=str(cfg.plan),
        seed=cfg.seed,
        batch_size=max(1, int(cfg.cluster.batch_size) // 2),
        workers=int(cfg.cluster.workers),
        truncated=str(cfg.get("truncated", "exclude_from_chosen")),
    )


def eval_settings(cfg):
    """``EvalSettings`` for ``moaa eval`` from ``conf/eval.yaml``."""
    from moaa_cluster.evaluation.settings import EvalSettings

    baseline_sampling = cfg.get("baseline_sampling")
    return EvalSettings(
        sampling=_plain(cfg.sampling),
        baseline_sampling=_plain(baseline_sampling) if baseline_sampling is not None else None,
        seed=cfg.seed,
        batch_size=int(cfg.cluster.batch_size),
        workers=int(cfg.cluster.workers),
        resamples=int(cfg.resamples),
        confidence=float(cfg.confidence),
        length_control=bool(cfg.length_control),
        protocol=protocol_settings(cfg.get("protocol"), cfg.seed),
    )


def protocol_settings(cfg, seed: int | None):
    """The evaluation protocol from ``conf/protocol/*.yaml`` (None: pairwise)."""
    from moaa_cluster.evaluation.settings import ProtocolSettings

    if cfg is None:
        return ProtocolSettings(seed=seed)
    plain = {k: v for k, v in _plain(cfg).items() if k != "run_tag"}
    unknown = set(plain) - set(ProtocolSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"protocol: unknown keys {sorted(unknown)}")
    return ProtocolSettings(**plain, seed=seed)


def eval_judge(cfg):
    """The evaluation judge and its model specs: the MoA judge, or one of its models alone."""
    spec, specs = judge(cfg.judge)
    key = cfg.get("single_judge")
    if key is not None:
        if key not in specs:
            raise ConfigError(
                f"single_judge {key!r} is not a model of judge {spec.name}: {sorted(specs)}"
            )
        spec = spec.single(key)
    return spec, {k: specs[k] for k in spec.models}


def train_settings(train_cfg, base_cfg, lora_cfg=None, seed: int = 0):
    """``TrainSettings`` from a ``conf/train`` entry, the base model spec and optional LoRA.

    The data file is filled in by the training run after it validates the data.
    """
    from moaa_cluster.training.settings import TrainSettings

    train, base = _plain(train_cfg), _plain(base_cfg)
    if not base.get("path"):
        raise ConfigError(f"base model {base.get('name')}: training needs a local `path`")
    known = set(TrainSettings.__dataclass_fields__) - {"kind", "base_model", "data_file", "lora"}
    unknown = set(train) - known - {"name", "kind"}
    if unknown:
        raise ConfigError(f"train config {train.get('name')}: unknown keys {sorted(unknown)}")
    return TrainSettings(
        kind=train.get("kind", ""),
        base_model=str(base["path"]),
        data_file="",
        lora=_plain(lora_cfg) if lora_cfg else None,
        seed=int(seed),
        trust_remote_code=bool(base.get("trust_remote_code", False)),
        **{k: v for k, v in train.items() if k in known and k != "seed"},
    )


def train_scaling(cluster_cfg):
    """Ray Train workers from ``cluster.train``."""
    from moaa_cluster.training.ray_train import Scaling

    train = _plain(cluster_cfg).get("train") or {}
    unknown = set(train) - set(Scaling.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"cluster.train: unknown keys {sorted(unknown)}")
    return Scaling(**train)


def _check_eval_judge(specs: dict, base) -> None:
    """A pipeline that aligns a real model must not be evaluated by the packaged toy judge
    (a paper-scale run that kept the embedded default ``judge@eval_judge``)."""
    from moaa_cluster.models.store import PACKAGED

    toy = {s.name for s in specs.values()} <= set(PACKAGED)
    if toy and base.name not in PACKAGED:
        raise ConfigError(
            f"the evaluation judge is the packaged toy judge ({sorted(s.name for s in specs.values())}) "
            f"but the model being aligned is {base.name}: set judge@eval_judge=... "
            "(e.g. paper_eval, or paper_stage2 for a recipe without stage 2)"
        )


def pipeline(cfg):
    """All stages' objects for ``moaa pipeline`` (``conf/pipeline.yaml``)."""
    from omegaconf import OmegaConf

    from moaa_cluster.end_to_end import STAGES, PipelineParts, check_stages

    mix, synth_specs, defaults = mixture(cfg.mixture)
    judge_spec, judge_specs = judge(cfg.judge)
    eval_judge_spec, eval_judge_specs = (
        judge(cfg.eval_judge) if cfg.get("eval_judge") is not None else (None, None)
    )
    base = model_specs({"base": cfg.base})["base"]
    _check_eval_judge(eval_judge_specs or judge_specs, base)
    prefs_view = OmegaConf.create(
        {**_plain(cfg.prefs), "seed": cfg.seed, "cluster": _plain(cfg.cluster)}
    )
    eval_view = OmegaConf.create(
        {
            "resamples": 1000,
            "confidence": 0.95,
            "length_control": True,
            **_plain(cfg.eval),
            "seed": cfg.seed,
            "cluster": _plain(cfg.cluster),
        }
    )

    def limit(stage_limit, dataset_cfg):
        return stage_limit if stage_limit is not None else dataset_cfg.get("limit")

    return PipelineParts(
        synth_sources=sources(cfg.synth_data),
        mixture=mix,
        synth_specs=synth_specs,
        synth_settings=synth_settings(cfg, defaults, cfg.synth),
        synth_limit=limit(cfg.synth.limit, cfg.synth_data),
        sft_settings=train_settings(cfg.train_sft, cfg.base, cfg.get("sft_lora"), cfg.seed),
        dpo_settings=train_settings(cfg.train_dpo, cfg.base, cfg.get("dpo_lora"), cfg.seed),
        scaling=train_scaling(cfg.cluster),
        prefs_sources=sources(cfg.prefs_data),
        judge=judge_spec,
        judge_specs=judge_specs,
        prefs_settings=prefs_settings(prefs_view),
        prefs_limit=limit(cfg.prefs.limit, cfg.prefs_data),
        base=base,
        eval_sources=sources(cfg.eval_data),
        eval_settings=eval_settings(eval_view),
        eval_limit=limit(cfg.eval.limit, cfg.eval_data),
        eval_judge=eval_judge_spec,
        eval_judge_specs=eval_judge_specs,
        stages=check_stages(tuple(cfg.get("stages") or STAGES)),
    )
