"""The pipeline checks every stage's engines against the cluster before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moaa_cluster import build
from moaa_cluster.engines.spec import ConfigError
from moaa_cluster.pipeline.end_to_end import preflight, trained_spec
from moaa_cluster.pipeline.prefs import SAMPLER

CONF = Path(__file__).resolve().parents[2] / "conf"
PAPER_1X8 = ["cluster=slurm_a100", "cluster.nodes=1", "mixture=paper_stage1", "judge=paper_stage2"]


def _check(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="pipeline", overrides=overrides)
    parts = build.pipeline(cfg)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    sft = trained_spec(parts.base, Path(os.devnull) / "sft", "sft")
    dpo = trained_spec(parts.base, Path(os.devnull) / "dpo", "dpo")
    preflight(
        parts,
        cluster,
        {**parts.judge_specs, SAMPLER: sft},
        {**parts.judge_specs, "model": dpo, "baseline": parts.base},
    )


def test_embedded_pipeline_fits_the_local_machine():
    _check(["cluster=local"])


def test_paper_models_on_one_node_are_refused_at_the_judge_stage():
    # stage 1 can go layer by layer on 1x8; the stage-2 judge's three engines need 10 GPUs
    with pytest.raises(ConfigError, match=r"pipeline stage prefs: .* = 8 GPUs: .* need 11 GPUs"):
        _check(PAPER_1X8)


def test_resident_stage1_on_one_node_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match=r"need 22 GPUs \(WizardLM-2-8x22B 8"):
        _check([*PAPER_1X8, "synth.execution=resident"])


def test_a_model_too_big_for_the_gpus_is_refused_even_layer_by_layer():
    with pytest.raises(ConfigError, match="WizardLM-2-8x22B: tensor_parallel_size 8 is too small"):
        _check([*PAPER_1X8, "cluster.gpu_memory_gb=40"])
