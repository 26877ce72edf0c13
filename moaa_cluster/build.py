"""The one place where configs become objects; everything below takes plain arguments."""

from __future__ import annotations

from moaa_cluster.engines.spec import ConfigError, ModelSpec, spec_from_dict
from moaa_cluster.moa.mixture import Agent, Mixture
from moaa_cluster.pipeline.io import Source
from moaa_cluster.pipeline.synth import SynthSettings


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
            unknown = set(seat) - {"model", "sampling"}
            if unknown:
                raise ConfigError(f"mixture layer {i + 1}: unknown seat keys {sorted(unknown)}")
            seats.append(Agent(model=seat["model"], sampling=dict(seat.get("sampling") or {})))
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


def synth_settings(cfg, defaults: dict) -> SynthSettings:
    return SynthSettings(
        defaults=defaults,
        seed=cfg.seed,
        batch_size=int(cfg.cluster.batch_size),
        workers=int(cfg.cluster.workers),
        record_prompts=bool(cfg.record_prompts),
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
    )
