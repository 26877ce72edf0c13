"""Every training recipe in ``conf/train`` builds its real TRL config, as the worker builds it.

The settings tests (``test_training.py``) stop at ``TrainSettings``; ``trl.SFTConfig`` and
``trl.DPOConfig`` are only built inside a Ray Train worker, after the model has loaded. A
recipe key TRL does not know (``warmup_ratio``, gone in transformers 5) therefore passed
every test and failed on the cluster. Here each recipe goes through the recipe module's own
``trl_config`` (what ``worker.run`` calls) with the cluster it targets: its worker count sets
the gradient accumulation, and its GPUs decide ``use_cpu``. ``test_preflight.py`` builds
the recipes of every ``conf/`` command the same way (``bf16_capable_gpu``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from moaa_cluster import build
from moaa_cluster.errors import ConfigError
from moaa_cluster.training import dpo, sft, worker
from moaa_cluster.training.settings import REMOVED_ARGS, TrainSettings

CONF = Path(__file__).resolve().parents[3] / "conf"
RECIPES = sorted((CONF / "train").glob("*.yaml"))
RECIPE_MODULES = {"sft": sft, "dpo": dpo}
# transformers' message when bf16 is asked for on a machine whose GPU (or lack of one) has none
NO_BF16 = r"Your setup doesn't support bf16/gpu"


@pytest.fixture(scope="module")
def trl_classes():
    """``{"sft": SFTConfig, "dpo": DPOConfig}``; imported once (trl takes seconds to import)."""
    from trl import DPOConfig, SFTConfig

    return {"sft": SFTConfig, "dpo": DPOConfig}


def _header_override(path: Path, key: str) -> str | None:
    """The value the recipe's header command gives ``key`` (``cluster``, ``model@base``)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    found = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", first)
    return found.group(1) if found else None


# recipes for the GPU cluster: the paper's, run with `cluster=slurm_a100`
GPU_RECIPES = [p for p in RECIPES if _header_override(p, "cluster") == "slurm_a100"]


def _recipe(compose, path: Path):
    """The recipe's settings and the Ray Train scaling of the cluster its header names."""
    kind = path.stem.split("_")[0]
    overrides = [f"train={path.stem}", "models_dir=/models"]
    for key in ("cluster", "model@base"):
        value = _header_override(path, key)
        if value:
            overrides.append(f"{key}={value}")
    cfg = compose(f"train_{kind}", overrides)
    settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
    return settings, build.train_scaling(cfg.cluster)


@contextmanager
def bf16_capable_gpu(on_gpu: bool):
    """Lets ``TrainingArguments`` believe a bf16-capable GPU is present when the target has one.

    Building the config is the whole point, but this machine has no GPU, and
    ``TrainingArguments.__post_init__`` refuses ``bf16=True`` without ``use_cpu`` unless
    ``is_torch_bf16_gpu_available()`` (an Ampere GPU: the paper's A100s are). That probe is
    the only one patched; ``test_without_a_gpu_only_the_bf16_check_refuses`` checks that it
    is the only thing standing between these recipes and a CPU-only build.
    """
    if not on_gpu:
        yield
        return
    with mock.patch("transformers.training_args.is_torch_bf16_gpu_available", return_value=True):
        yield


def _value(v):
    return getattr(v, "value", v)  # TrainingArguments turns some strings into enums


def test_recipes_are_discovered():
    stems = {p.stem for p in RECIPES}
    assert {"sft_embedded", "dpo_embedded", "sft_paper_llama", "dpo_paper_gemma"} <= stems
    assert {p.stem for p in GPU_RECIPES} >= {"sft_paper_llama", "dpo_paper_gemma"}
    assert {p.stem.split("_")[0] for p in RECIPES} == set(RECIPE_MODULES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_its_trl_config(compose, trl_classes, tmp_path, path):
    settings, scaling = _recipe(compose, path)
    config_cls = trl_classes[settings.kind]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(settings.args) - known)
    assert not unknown, f"{path.name}: {config_cls.__name__} has no field(s) {unknown}"

    with bf16_capable_gpu(scaling.use_gpu):
        config = RECIPE_MODULES[settings.kind].trl_config(
            settings,
            str(tmp_path),
            world_size=scaling.num_workers,
            use_cpu=not scaling.use_gpu,
        )

    assert type(config) is config_cls
    for key, value in settings.args.items():
        assert _value(getattr(config, key)) == value, f"{path.name}: {key}"
    # the recipe owns these; the effective batch is the recipe's over the cluster's workers
    assert config.output_dir == str(tmp_path)
    assert config.use_cpu is (not scaling.use_gpu)
    assert config.report_to == []
    # plain log lines, not tqdm carriage returns, in Ray's forwarded logs (unless set)
    assert config.disable_tqdm is settings.args.get("disable_tqdm", True)
    assert config.per_device_train_batch_size == settings.per_device_batch_size
    effective = (
        config.per_device_train_batch_size
        * scaling.num_workers
        * config.gradient_accumulation_steps
    )
    expected = settings.effective_batch_size or settings.per_device_batch_size * scaling.num_workers
    assert effective == expected


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.stem)
def test_without_a_gpu_only_the_bf16_check_refuses(compose, tmp_path, path):
    """A GPU recipe built the way a GPU worker builds it (``use_cpu=False``), unpatched.

    On this CPU-only machine either it builds (no bf16), or the one error is transformers'
    bf16 device check: so the patch in ``bf16_capable_gpu`` hides nothing else.
    """
    import torch

    settings, scaling = _recipe(compose, path)
    assert scaling.use_gpu, f"{path.stem}: its header's cluster has GPU training workers"

    def build_it():
        return RECIPE_MODULES[settings.kind].trl_config(
            settings, str(tmp_path), world_size=scaling.num_workers, use_cpu=False
        )

    if settings.args.get("bf16") and not torch.cuda.is_available():
        with pytest.raises(ValueError, match=NO_BF16):
            build_it()
    else:
        assert build_it().use_cpu is False


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_warmup_is_a_ratio_of_the_total_steps(compose, tmp_path, path):
    """transformers 5 reads a float ``warmup_steps`` below 1 as a ratio of the total steps
    (``TrainingArguments.get_warmup_steps``); that is how the recipes ask for warmup."""
    settings, _ = _recipe(compose, path)
    warmup = settings.args.get("warmup_steps", 0)
    config = RECIPE_MODULES[settings.kind].trl_config(
        settings, str(tmp_path), world_size=1, use_cpu=True
    )
    if 0 < warmup < 1:
        assert config.get_warmup_steps(1000) == math.ceil(1000 * warmup)
        assert config.get_warmup_steps(10) >= 1
    else:
        assert config.get_warmup_steps(1000) == int(warmup)


# The paper's numbers (/work/shared/PAPER.md, "Stage 1 setup" and "Stage 2"): SFT lr 8.0e-6
# (Sec. 4.1), effective batch 128, Llama 6 epochs, Gemma 5, packing on; DPO beta 0.01, lr
# 8.0e-7 (Llama) / 3.0e-7 (Gemma), 5 epochs, effective batch 128; one node of 8 x A100.
PAPER = {
    "sft_paper_llama": {"learning_rate": 8.0e-6, "num_train_epochs": 6, "packing": True},
    "sft_paper_gemma": {"learning_rate": 8.0e-6, "num_train_epochs": 5, "packing": True},
    "dpo_paper_llama": {"learning_rate": 8.0e-7, "num_train_epochs": 5, "beta": 0.01},
    "dpo_paper_gemma": {"learning_rate": 3.0e-7, "num_train_epochs": 5, "beta": 0.01},
}


@pytest.mark.parametrize("stem", sorted(PAPER))
def test_paper_recipes_carry_the_papers_numbers_into_trl(compose, tmp_path, stem):
    settings, scaling = _recipe(compose, CONF / "train" / f"{stem}.yaml")
    assert scaling.use_gpu and scaling.num_workers == 8  # one 8-GPU node
    with bf16_capable_gpu(True):
        config = RECIPE_MODULES[settings.kind].trl_config(
            settings, str(tmp_path), world_size=scaling.num_workers, use_cpu=False
        )
    for key, value in PAPER[stem].items():
        assert getattr(config, key) == value, key
    assert config.per_device_train_batch_size * 8 * config.gradient_accumulation_steps == 128
    assert config.bf16 is True


def test_a_key_trl_does_not_know_is_refused(tmp_path):
    # what the recipe test catches: TRL refuses a misspelt key
    typo = TrainSettings(kind="sft", base_model="/m", data_file="", args={"warmpu_steps": 0.1})
    with pytest.raises(TypeError, match="warmpu_steps"):
        sft.trl_config(typo, str(tmp_path), world_size=1, use_cpu=True)


@pytest.mark.parametrize("key", sorted(REMOVED_ARGS))
def test_removed_transformers_args_are_refused_with_the_replacement(key):
    # refused where the driver builds the settings, before any worker loads a model
    with pytest.raises(ConfigError, match=rf"train.args.{key}: .*warmup_steps"):
        TrainSettings(kind="dpo", base_model="/m", data_file="", args={key: 0.1})


@pytest.mark.parametrize("kind", sorted(RECIPE_MODULES))
def test_the_worker_builds_the_config_with_the_recipes_trl_config(monkeypatch, kind):
    """``train_loop`` hands ``worker.run`` the same ``trl_config`` the tests above build."""
    import trl

    seen = {}
    monkeypatch.setattr(worker, "run", lambda config, make, trainer: seen.update(m=make, t=trainer))
    module = RECIPE_MODULES[kind]
    module.train_loop({})
    assert seen["m"] is module.trl_config
    assert seen["t"] is getattr(trl, f"{kind.upper()}Trainer")


def test_the_driver_refuses_a_bad_recipe_before_ray_train_starts():
    from moaa_cluster.training.ray_train import Scaling, check_recipe

    def settings(kind: str, **args) -> TrainSettings:
        return TrainSettings(kind=kind, base_model="/m", data_file="", args=args)

    cpu = Scaling(num_workers=1, use_gpu=False)
    check_recipe("sft", settings("sft", learning_rate=1e-5, max_length=256), cpu)
    with pytest.raises(ConfigError, match=r"train recipe \(sft\): TRL refuses it: .*no_such_key"):
        check_recipe("sft", settings("sft", no_such_key=1), cpu)
    with pytest.raises(ConfigError, match=r"train recipe \(dpo\): TRL refuses it"):
        check_recipe("dpo", settings("dpo", fp16=True, bf16=True), cpu)
    # bf16 for GPU workers, checked from a driver without a GPU: the workers decide
    check_recipe("dpo", settings("dpo", bf16=True), Scaling(num_workers=1, use_gpu=True))
