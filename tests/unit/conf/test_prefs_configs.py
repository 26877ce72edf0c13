"""Stage-2 caps as composed by Hydra: paper configs get the paper's lengths and dataset sizes,
the embedded default keeps its toy ones (160-token candidates, 4 instructions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moaa_cluster import build
from moaa_cluster.errors import ConfigError

CONF = Path(__file__).resolve().parents[3] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
JUDGES = sorted(p.stem for p in (CONF / "judge").glob("*.yaml"))
PAPER_PIPELINE = [
    "models_dir=/m",
    "mixture=paper_small_scale",
    "judge=paper_stage2",
    "judge@eval_judge=paper_eval",
    "model@base=gemma_2_9b_it",
    "train@train_sft=sft_paper_gemma",
    "train@train_dpo=dpo_paper_gemma",
    "cluster=slurm_a100",
    "dataset@synth_data=ultrafeedback+ultrachat_5k",
    "dataset@prefs_data=ultrafeedback_6k",
]


def test_embedded_pipeline_keeps_its_toy_sizes_in_a_dataset(compose):
    cfg = compose("pipeline", ["models_dir=/m"])
    assert cfg.prefs.limit is None  # the toy limit is the dataset's, not the recipe's
    assert cfg.prefs_data.name == "embedded_prefs"
    parts = build.pipeline(cfg)
    assert parts.prefs_limit == 3
    assert [(s.name, s.path) for s in parts.prefs_sources] == [("embedded_demo", "builtin:demo")]
    assert parts.prefs_settings.sampling == {"temperature": 0.8, "top_p": 1.0, "max_tokens": 160}
    # the packaged judge ranks 3 candidates (the demo's cost); the paper judges rank 5
    assert parts.prefs_settings.num_candidates == 3
    for recipe in ("pipeline", "prefs", "plan"):
        paper = compose(recipe, ["models_dir=/m", "judge=paper_stage2"])
        n = paper.prefs.num_candidates if recipe != "prefs" else paper.num_candidates
        assert n == 5, recipe


def test_embedded_prefs_keeps_160_token_candidates(compose):
    cfg = compose("prefs", [])
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    assert sampling == {"temperature": 0.8, "top_p": 1.0, "max_tokens": 160}
    assert cfg.truncated == "exclude_from_chosen" and cfg.limit is None
    assert compose("prefs", ["sampling.max_tokens=48"]).sampling.max_tokens == 48


def test_paper_pipeline_recipe_takes_paper_lengths_and_dataset_sizes(compose):
    cfg = compose("pipeline", PAPER_PIPELINE)
    parts = build.pipeline(cfg)
    assert parts.prefs_settings.sampling["max_tokens"] == 2048
    assert parts.prefs_limit is None  # no toy limit: the dataset's own 6,000
    (src,) = parts.prefs_sources
    assert (src.name, src.limit) == ("ultrafeedback_6k", 6000)


def test_the_eval_judge_is_not_the_reward_model_and_never_the_toy_judge_at_paper_scale(compose):
    parts = build.pipeline(compose("pipeline", PAPER_PIPELINE))
    assert parts.judge.name == "paper_stage2" and parts.eval_judge.name == "paper_eval"
    assert parts.eval_judge.aggregator not in (parts.judge.aggregator,)
    embedded = build.pipeline(compose("pipeline", []))
    assert (embedded.judge.name, embedded.eval_judge.name) == ("embedded", "embedded_eval")
    assert set(embedded.eval_judge_specs) == {"gemma_3_270m"}
    kept_default = [o for o in PAPER_PIPELINE if not o.startswith("judge@eval_judge")]
    with pytest.raises(ConfigError, match="packaged toy judge .* set judge@eval_judge"):
        build.pipeline(compose("pipeline", kept_default))


def test_paper_prefs_takes_paper_lengths(compose):
    cfg = compose("prefs", ["judge=paper_stage2", "dataset=ultrafeedback_6k"])
    assert OmegaConf.to_container(cfg, resolve=True)["sampling"]["max_tokens"] == 2048
    assert cfg.limit is None and cfg.dataset.limit is None


def test_no_paper_experiment_carries_toy_caps(compose):
    checked = []
    for stem in EXPERIMENTS:
        cfg = compose("pipeline", ["models_dir=/m", f"+experiment={stem}"])
        if cfg.judge.name != "paper_stage2":
            continue  # the ablations keep the embedded judge: toy experiments
        parts = build.pipeline(cfg)
        assert parts.prefs_settings.sampling["max_tokens"] == 2048, stem
        assert parts.prefs_settings.num_candidates == 5, stem  # the paper's, not the toy 3
        if "prefs" in parts.stages:
            assert parts.prefs_limit is None, stem
            assert [s.name for s in parts.prefs_sources] != ["embedded_demo"], stem
        checked.append((stem, "prefs" in parts.stages))
    # guards the filter: some experiment runs stage 2 with the paper judge
    assert any(runs_prefs for _, runs_prefs in checked), checked


@pytest.mark.parametrize("stem", JUDGES)
def test_every_judge_states_its_candidate_length(compose, stem):
    cfg = compose("prefs", [f"judge={stem}"])
    expected = {"embedded": 160, "paper_stage2": 2048}.get(stem)
    assert isinstance(cfg.judge.candidate_max_tokens, int) and cfg.judge.candidate_max_tokens > 0
    if expected is not None:
        assert cfg.judge.candidate_max_tokens == expected
    assert cfg.sampling.max_tokens == cfg.judge.candidate_max_tokens


@pytest.mark.parametrize("config", ["prefs", "pipeline"])
def test_truncated_key_reaches_the_settings(compose, config):
    key = "truncated=allow" if config == "prefs" else "prefs.truncated=allow"
    cfg = compose(config, ["models_dir=/m", key])
    settings = (
        build.pipeline(cfg).prefs_settings if config == "pipeline" else build.prefs_settings(cfg)
    )
    assert settings.truncated == "allow"


def test_the_paper_judges_verdict_prompt_fits_its_aggregator(compose):
    """K.4 at its worst: both candidates and every critique at full length, then the verdict.

    The template's own tokens are bounded by its characters / 3 (English BPE averages ~4
    characters a token); the question is given 512 tokens.
    """
    from moaa_cluster.judge.prompts import JUDGE_AGGREGATOR, JUDGE_PROPOSER

    cfg = compose("prefs", ["models_dir=/m", "judge=paper_stage2"])
    judge, specs = build.judge(cfg.judge)
    worst = (
        len(JUDGE_AGGREGATOR) // 3
        + 512
        + 2 * cfg.judge.candidate_max_tokens
        + len(judge.proposers) * judge.sampling["max_tokens"]
        + judge.verdict_sampling["max_tokens"]
    )
    assert worst <= specs[judge.aggregator].max_model_len, worst
    for key in judge.proposers:  # K.3: both candidates, then one critique
        k3 = (
            len(JUDGE_PROPOSER) // 3
            + 512
            + 2 * cfg.judge.candidate_max_tokens
            + judge.sampling["max_tokens"]
        )
        assert k3 <= specs[key].max_model_len


def test_the_full_size_embedded_pipeline_puts_back_what_the_demo_trims(compose):
    demo = build.pipeline(compose("pipeline", ["models_dir=/m"]))
    full_cfg = compose("pipeline", ["models_dir=/m", "+experiment=embedded_full"])
    full = build.pipeline(full_cfg)
    # the demo samples 10 of the 40 synth conversations (seeded), full reads them all
    assert [s.limit for s in demo.synth_sources] == [10] and demo.synth_limit is None
    assert [s.limit for s in full.synth_sources] == [None] and full.synth_limit is None
    assert (demo.prefs_limit, demo.eval_limit) == (3, 8)
    assert (full.prefs_limit, full.eval_limit) == (4, None)
    assert (demo.prefs_settings.num_candidates, full.prefs_settings.num_candidates) == (3, 5)
    assert full.judge == demo.judge and full.mixture == demo.mixture  # same models and judges
    assert full_cfg.output_dir != compose("pipeline", ["models_dir=/m"]).output_dir
