"""Config composition of every file in ``conf/``, and the config -> object errors of build/spec.

The group parametrizations glob ``conf/<group>/*.yaml``, so a new file is covered automatically.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moaa_cluster import build
from moaa_cluster.data.sources import Source
from moaa_cluster.engines.spec import ModelSpec, spec_from_dict
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Mixture

CONF = Path(__file__).resolve().parents[2] / "conf"


def _stems(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


MIXTURES = _stems("mixture")
DATASETS = _stems("dataset")
CLUSTERS = _stems("cluster")
MODEL_FILES = sorted((CONF / "model").glob("*.yaml"))
ALL_YAML = sorted(CONF.rglob("*.yaml"))
PAPER_MIXTURES = [m for m in MIXTURES if m.startswith("paper_")]


def test_groups_are_discovered():
    # guards the glob itself: an empty parametrization would silently test nothing
    for expected, found in (
        ({"embedded", "paper_stage1", "paper_small_scale"}, MIXTURES),
        ({"embedded_demo", "ultrafeedback+ultrachat_5k"}, DATASETS),
        ({"local", "slurm_a100"}, CLUSTERS),
    ):
        assert expected <= set(found)
    assert MODEL_FILES
    assert CONF / "synth.yaml" in ALL_YAML


# --------------------------------------------------------------------------- house style


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONF)))
def test_every_yaml_starts_with_a_command_comment(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#"), f"{path.relative_to(CONF)}: first line must be a `# ...` comment"
    assert len(first.lstrip("#").strip()) > 0


# --------------------------------------------------------------------------- mixtures


@pytest.mark.parametrize("stem", MIXTURES)
def test_mixture_composes_and_builds(compose, stem):
    cfg = compose("synth", [f"mixture={stem}"])
    assert cfg.mixture.name == stem
    mix, specs, defaults = build.mixture(cfg.mixture)
    assert isinstance(mix, Mixture)
    assert len(mix.layers) >= 2
    assert len(mix.layers[-1]) == 1, "the last layer must be a single aggregator"
    assert all(len(layer) >= 1 for layer in mix.layers)
    for layer in mix.layers:
        for agent in layer:
            assert agent.model in specs, f"seat {agent.model!r} references an undefined model"
    for key, spec in specs.items():
        assert isinstance(spec, ModelSpec)
        spec.validate(check_files=False)
        assert spec.name, key
    assert isinstance(defaults, dict)
    # every defined model is actually seated somewhere (no dead engines started)
    assert set(specs) == set(mix.models)
    # the run name resolves (it names the output directory)
    assert cfg.run_name == f"synth-{stem}-{cfg.dataset.name}"


def _names(mix, specs, layer):
    return [specs[a.model].name for a in mix.layers[layer]]


def test_paper_stage1_mixture(compose):
    mix, specs, defaults = build.mixture(compose("synth", ["mixture=paper_stage1"]).mixture)
    assert len(mix.layers) == 2
    assert _names(mix, specs, 0) == [
        "WizardLM-2-8x22B",
        "Qwen2-72B-Instruct",
        "gemma-2-27b-it",
        "Llama-3.1-70B-Instruct",
    ]
    assert _names(mix, specs, 1) == ["Qwen1.5-110B-Chat"]
    assert defaults["temperature"] == 0.7


def test_paper_small_scale_mixture(compose):
    mix, specs, _ = build.mixture(compose("synth", ["mixture=paper_small_scale"]).mixture)
    assert len(mix.layers) == 2
    assert _names(mix, specs, 0) == [
        "gemma-2-9b-it",
        "Llama-3.1-8B-Instruct",
        "Mistral-7B-Instruct-v0.3",
    ]
    assert _names(mix, specs, 1) == ["gemma-2-9b-it"]


def test_default_is_embedded_mixture(compose):
    cfg = compose("synth", [])
    assert cfg.mixture.name == "embedded"
    assert cfg.dataset.name == "embedded_demo"
    mix, specs, defaults = build.mixture(cfg.mixture)
    assert len(mix.layers) == 2
    assert _names(mix, specs, 0) == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert _names(mix, specs, 1) == ["smollm2-135m-instruct"]
    # the aggregator seat overrides one sampling key; the rest come from the mixture defaults
    assert mix.layers[1][0].sampling == {"temperature": 0.5}
    assert defaults["max_tokens"] > 0
    for spec in specs.values():
        assert spec.accelerator_type is None
        assert spec.path and spec.path.startswith(str(cfg.models_dir))


@pytest.mark.parametrize("stem", PAPER_MIXTURES)
def test_paper_models_fit_a100_80gb(compose, stem):
    cfg = compose("synth", [f"mixture={stem}", "cluster=slurm_a100"])
    _, specs, _ = build.mixture(cfg.mixture)
    gpu_gb = cfg.cluster.gpu_memory_gb
    assert gpu_gb == 80
    for spec in specs.values():
        assert spec.accelerator_type == "A100-80G", spec.name
        assert spec.params_b, f"{spec.name}: params_b is needed for planning"
        assert spec.dtype == "bfloat16"
        weights_gb = spec.params_b * 2
        assert spec.tensor_parallel_size * gpu_gb > weights_gb, (
            f"{spec.name}: TP {spec.tensor_parallel_size} x {gpu_gb} GB does not hold "
            f"{weights_gb:.0f} GB of bf16 weights"
        )
        assert spec.tensor_parallel_size <= cfg.cluster.gpus_per_node, spec.name
        assert spec.hub_id, f"{spec.name}: paper models name their hub id"


@pytest.mark.parametrize("stem", PAPER_MIXTURES)
def test_paper_models_on_local_cluster_have_no_accelerator(compose, stem):
    _, specs, _ = build.mixture(compose("synth", [f"mixture={stem}"]).mixture)
    assert all(spec.accelerator_type is None for spec in specs.values())


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("stem", DATASETS)
def test_dataset_composes_and_builds(compose, stem):
    cfg = compose("synth", [f"dataset={stem}"])
    assert cfg.dataset.name == stem
    srcs = build.sources(cfg.dataset)
    assert srcs and all(isinstance(s, Source) for s in srcs)
    assert list(cfg.dataset.sources) == [s.name for s in srcs]
    for s in srcs:
        assert s.path or s.hub_id, s.name
        if s.sample_seed is not None:
            assert s.limit is not None, f"{s.name}: sample_seed without limit does nothing"


def test_ultrafeedback_plus_ultrachat(compose):
    cfg = compose("synth", ["dataset=ultrafeedback+ultrachat_5k"])
    srcs = {s.name: s for s in build.sources(cfg.dataset)}
    assert set(srcs) == {"ultrafeedback", "ultrachat_5k"}
    assert srcs["ultrachat_5k"].limit == 5000
    assert srcs["ultrachat_5k"].sample_seed is not None
    assert srcs["ultrachat_5k"].hub_id == "HuggingFaceH4/ultrachat_200k"
    assert srcs["ultrafeedback"].limit is None
    assert srcs["ultrafeedback"].hub_id == "openbmb/UltraFeedback"


def test_embedded_demo_dataset_is_builtin(compose):
    srcs = build.sources(compose("synth", []).dataset)
    assert [s.path for s in srcs] == ["builtin:demo"]


def test_sources_rejects_unknown_key_and_empty():
    with pytest.raises(ConfigError, match="unknown keys"):
        build.sources({"name": "d", "sources": {"a": {"path": "x.jsonl", "lmit": 3}}})
    with pytest.raises(ConfigError, match="no sources"):
        build.sources({"name": "d", "sources": {}})


# --------------------------------------------------------------------------- clusters


@pytest.mark.parametrize("stem", CLUSTERS)
def test_cluster_composes(compose, stem):
    cfg = compose("synth", [f"cluster={stem}"])
    for key in ("address", "accelerator_type", "workers", "batch_size", "env"):
        assert key in cfg.cluster, f"cluster {stem}: missing {key}"
    settings = build.synth_settings(cfg, {"temperature": 0.7})
    assert settings.workers >= 1
    assert settings.batch_size >= 1
    assert settings.defaults == {"temperature": 0.7}
    # model specs pick the cluster's accelerator type up through interpolation
    _, specs, _ = build.mixture(cfg.mixture)
    assert all(s.accelerator_type == cfg.cluster.accelerator_type for s in specs.values())


# --------------------------------------------------------------------------- model files


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file(path):
    assert path.read_text(encoding="utf-8").startswith("#")
    raw = OmegaConf.load(path)
    keys = set(raw.keys())
    assert keys <= set(ModelSpec.__dataclass_fields__), keys - set(ModelSpec.__dataclass_fields__)
    assert "name" in keys
    # resolve the interpolations the file uses (models_dir, cluster.accelerator_type)
    root = OmegaConf.create(
        {"models_dir": "/models", "cluster": {"accelerator_type": None}, "model": raw}
    )
    values = OmegaConf.to_container(root, resolve=True)["model"]
    spec = spec_from_dict(path.stem, values)
    spec.validate(check_files=False)
    if spec.path:
        assert spec.path.startswith("/models/")
    assert spec.params_b and spec.params_b > 0


# --------------------------------------------------------------------------- build errors


def _mixture_dict(layers, models=None):
    models = models if models is not None else {"a": {"name": "a", "path": "/m/a"}}
    return {"name": "x", "models": models, "layers": layers}


def test_build_mixture_from_plain_dict():
    mix, specs, defaults = build.mixture(
        _mixture_dict([[{"model": "a"}], [{"model": "a", "sampling": {"temperature": 0.1}}]])
    )
    assert [[a.model for a in layer] for layer in mix.layers] == [["a"], ["a"]]
    assert mix.layers[1][0].sampling == {"temperature": 0.1}
    assert specs["a"].name == "a"
    assert defaults == {}


def test_build_mixture_undefined_model():
    with pytest.raises(ConfigError, match="'nope'"):
        build.mixture(_mixture_dict([[{"model": "nope"}], [{"model": "a"}]]))


def test_build_mixture_unknown_seat_key():
    with pytest.raises(ConfigError, match="unknown seat keys"):
        build.mixture(_mixture_dict([[{"model": "a", "temperature": 0.2}], [{"model": "a"}]]))


def test_build_mixture_single_layer():
    with pytest.raises(ConfigError, match="two layers"):
        build.mixture(_mixture_dict([[{"model": "a"}]]))


def test_build_mixture_two_aggregators():
    with pytest.raises(ConfigError, match="single aggregator"):
        build.mixture(_mixture_dict([[{"model": "a"}], [{"model": "a"}, {"model": "a"}]]))


def test_build_mixture_bad_model_key():
    with pytest.raises(ConfigError, match="unknown keys"):
        build.mixture(_mixture_dict([[{"model": "a"}], [{"model": "a"}]], {"a": {"pth": "/x"}}))


# --------------------------------------------------------------------------- spec errors


def test_spec_from_dict_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown keys \['tensor_parallel'\]"):
        spec_from_dict("m", {"path": "/x", "tensor_parallel": 2})


def test_spec_from_dict_defaults_name_and_copies_engine_kwargs():
    kwargs = {"enforce_eager": True}
    spec = spec_from_dict("m", {"path": "/x", "engine_kwargs": kwargs})
    assert spec.name == "m"
    assert spec.engine_kwargs == kwargs and spec.engine_kwargs is not kwargs
    assert spec_from_dict("m", {"path": "/x", "engine_kwargs": None}).engine_kwargs == {}


def test_validate_bad_backend():
    with pytest.raises(ConfigError, match="backend"):
        ModelSpec(name="m", path="/x", backend="tgi").validate(check_files=False)


def test_validate_openai_needs_base_url():
    with pytest.raises(ConfigError, match="base_url"):
        ModelSpec(name="m", backend="openai").validate(check_files=False)
    # with base_url no path or hub id is needed
    ModelSpec(name="m", backend="openai", base_url="http://localhost:8000/v1").validate()


def test_validate_needs_path_or_hub_id():
    with pytest.raises(ConfigError, match="path .* or hub_id"):
        ModelSpec(name="m").validate(check_files=False)
    ModelSpec(name="m", hub_id="org/m").validate()


def test_validate_tensor_parallel_positive():
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        ModelSpec(name="m", path="/x", tensor_parallel_size=0).validate(check_files=False)


def test_validate_missing_checkpoint(tmp_path):
    missing = tmp_path / "models" / "m"
    with pytest.raises(ConfigError, match="no checkpoint") as info:
        ModelSpec(name="m", path=str(missing)).validate()
    assert str(missing) in str(info.value)
    assert "moaa models prepare" in str(info.value)
    # a directory without config.json is not a checkpoint either
    missing.mkdir(parents=True)
    with pytest.raises(ConfigError, match="no checkpoint"):
        ModelSpec(name="m", path=str(missing)).validate()
    (missing / "config.json").write_text("{}")
    ModelSpec(name="m", path=str(missing)).validate()
    # check_files=False never looks at the disk
    ModelSpec(name="m", path=str(tmp_path / "nowhere")).validate(check_files=False)


JUDGE_FILES = sorted((CONF / "judge").glob("*.yaml"))


@pytest.mark.parametrize("path", JUDGE_FILES, ids=lambda p: p.stem)
def test_judge_composes_and_builds(compose, path):
    cfg = compose("prefs", [f"judge={path.stem}"])
    judge, specs = build.judge(cfg.judge)
    for spec in specs.values():
        spec.validate(check_files=False)
    assert set(judge.models) <= set(specs)
    assert judge.single(judge.aggregator).proposers == (judge.aggregator,)


def test_paper_stage2_judge_shares_qwen2_between_roles(compose):
    cfg = compose("prefs", ["judge=paper_stage2", "cluster=slurm_a100"])
    judge, specs = build.judge(cfg.judge)
    names = [specs[k].name for k in judge.proposers]
    assert names == ["gemma-2-27b-it", "Llama-3.1-70B-Instruct", "Qwen2-72B-Instruct"]
    assert specs[judge.aggregator].name == "Qwen2-72B-Instruct"
    assert judge.aggregator in judge.proposers  # one model key: one engine for both roles
    assert len(judge.models) == 3


@pytest.mark.parametrize("task", ["sample", "prefs", "judge_eval"])
def test_task_configs_compose(compose, task):
    overrides = ["pairs=/tmp/x.jsonl"] if task == "judge_eval" else []
    cfg = compose(task, overrides)
    assert cfg.task == task
