"""Rehearsal: the config transform that lets a paper config run here at its real shape."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from moaa_cluster import build, rehearsal
from moaa_cluster.cli import CONF_DIR
from moaa_cluster.end_to_end import STAGES, check_stages
from moaa_cluster.engines import host as engine_host
from moaa_cluster.errors import ConfigError

PAPER_STAGE1 = {
    "WizardLM-2-8x22B",
    "Qwen2-72B-Instruct",
    "gemma-2-27b-it",
    "Llama-3.1-70B-Instruct",
    "Qwen1.5-110B-Chat",
}


@pytest.fixture
def models_dir(tmp_path):
    """A models directory whose stand-in checkpoint says what SmolLM2-135M's does."""
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text(
        '{"max_position_embeddings": 8192}'
    )
    return tmp_path


def rehearsed(compose, config: str, overrides: list[str]) -> tuple[dict, dict]:
    cfg = compose(config, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    return plain, rehearsal.rehearse(plain, rehearsal.load_local_cluster(CONF_DIR))


def test_paper_stage1_keeps_its_shape_and_one_engine_answers_for_all(compose, models_dir):
    before, after = rehearsed(
        compose, "synth", [f"models_dir={models_dir}", "mixture=paper_stage1", "cluster=slurm_a100"]
    )
    mix, specs, defaults = build.mixture(OmegaConf.create(after["mixture"]))
    _, real, real_defaults = build.mixture(OmegaConf.create(before["mixture"]))
    # what a cluster run would have: names, layers, context lengths, sampling
    assert {s.name for s in specs.values()} == PAPER_STAGE1
    assert [[a.model for a in layer] for layer in mix.layers] == [
        ["wizardlm_2_8x22b", "qwen2_72b_instruct", "gemma_2_27b_it", "llama_3_1_70b_instruct"],
        ["qwen1_5_110b_chat"],
    ]
    assert defaults == real_defaults == {"temperature": 0.7, "max_tokens": 2048}
    assert {k: s.max_model_len for k, s in specs.items()} == {
        k: s.max_model_len for k, s in real.items()
    }
    # what this machine runs: one CPU engine of the packaged model
    assert {s.engine_name for s in specs.values()} == {"rehearsal-smollm2-135m-instruct"}
    assert {s.path for s in specs.values()} == {f"{models_dir}/smollm2-135m-instruct"}
    assert all(s.tensor_parallel_size == 1 and s.accelerator_type is None for s in specs.values())
    assert all(s.engine_kwargs["max_model_len"] == 8192 for s in specs.values())
    # chunked prefill is off on CPU: one step must hold the longest prompt
    assert all(s.engine_kwargs["max_num_batched_tokens"] >= 8192 for s in specs.values())
    assert after["cluster"]["accelerator_type"] is None
    assert after["rehearsal"]["cluster_configured"]["accelerator_type"] == "A100-80G"
    assert after["output_dir"] == before["output_dir"] + "-rehearsal"
    assert {m["name"] for m in after["rehearsal"]["models"].values()} == PAPER_STAGE1
    # the five models are one engine to the planner: it fits this machine
    engine_host.preflight(after["cluster"], list(specs.values()))
    assert len(engine_host.engine_specs(list(specs.values()))) == 1


def test_a_stand_in_shorter_than_a_context_is_noted(compose, models_dir):
    (models_dir / "smollm2-135m-instruct" / "config.json").write_text(
        '{"max_position_embeddings": 4096}'
    )
    cfg = compose("synth", [f"models_dir={models_dir}", "mixture=paper_small_scale"])
    after = rehearsal.rehearse(
        OmegaConf.to_container(cfg, resolve=True), rehearsal.load_local_cluster(CONF_DIR)
    )
    assert after["rehearsal"]["engine_max_model_len"] == 4096
    assert any("cannot be rehearsed" in n for n in after["rehearsal"]["notes"])


def test_scale_multiplies_every_max_tokens(compose):
    _, after = rehearsed(
        compose, "prefs", ["judge=paper_stage2", "rehearsal_scale=0.25", "sampling.max_tokens=2048"]
    )
    assert after["sampling"]["max_tokens"] == 512
    assert after["judge"]["sampling"]["max_tokens"] == 256
    assert after["rehearsal"]["max_tokens_scale"] == 0.25
    with pytest.raises(ConfigError, match="rehearsal_scale"):
        rehearsed(compose, "prefs", ["rehearsal_scale=0"])


def test_judge_and_sampler_are_all_stood_in(compose):
    _, after = rehearsed(compose, "prefs", ["judge=paper_stage2", "sampler.path=/ckpt/sft"])
    judge, specs = build.judge(OmegaConf.create(after["judge"]))
    sampler = build.model_specs({"s": after["sampler"]})["s"]
    assert judge.proposers == ("gemma_2_27b_it", "llama_3_1_70b_instruct", "qwen2_72b_instruct")
    assert {s.engine_name for s in [*specs.values(), sampler]} == {
        "rehearsal-smollm2-135m-instruct"
    }
    assert after["rehearsal"]["models"]["sampler"]["was"]["path"] == "/ckpt/sft"


def test_the_stand_in_must_be_a_local_model(compose):
    cfg = OmegaConf.to_container(compose("synth", ["models_dir=/m"]), resolve=True)
    cfg["stand_in"] = {"name": "x", "max_model_len": 10, "hub_id": "org/x"}
    with pytest.raises(ConfigError, match="stand_in"):
        rehearsal.rehearse(cfg, {})


def test_recipes_choose_their_stages():
    assert check_stages(STAGES) == STAGES
    assert check_stages(("synth", "sft", "eval")) == ("synth", "sft", "eval")
    for bad in [("synth", "sft", "prefs", "eval"), ("sft", "synth"), ("synth", "sft", "x")]:
        with pytest.raises(ConfigError):
            check_stages(bad)


def test_training_recipes_keep_their_shape_without_gpu_precision(compose, models_dir):
    before, after = rehearsed(
        compose, "pipeline", [f"models_dir={models_dir}", "+experiment=self_improvement"]
    )
    assert before["train_sft"]["args"]["bf16"] is True
    args = after["train_sft"]["args"]
    assert args["bf16"] is False  # transformers refuses bf16 mixed precision without a GPU
    assert {k: v for k, v in args.items() if k != "bf16"} == {
        k: v for k, v in before["train_sft"]["args"].items() if k != "bf16"
    }
    assert after["train_sft"]["effective_batch_size"] == 128
    assert any("bf16" in n for n in after["rehearsal"]["notes"])
    parts = build.pipeline(OmegaConf.create(after))
    assert parts.stages == ("synth", "sft", "eval")
    assert parts.base.name == "gemma-2-9b-it" and parts.base.system_role == "fold"
    assert parts.base.engine_name == "rehearsal-smollm2-135m-instruct"
    assert parts.sft_settings.base_model == f"{models_dir}/smollm2-135m-instruct"
