"""Self-MoA: one model's seeded samples are the proposals, that model aggregates."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from moaa_cluster import build, rehearsal
from moaa_cluster.cli import CONF_DIR
from moaa_cluster.moa.mixture import plan_steps, step_seed


@pytest.mark.parametrize(("name", "samples"), [("self_moa", 4), ("embedded_self_moa", 3)])
def test_one_model_samples_with_a_distinct_seed_per_seat(compose, name, samples):
    mix, specs, defaults = build.mixture(compose("synth", [f"mixture={name}"]).mixture)
    assert len(specs) == 1 and len(mix.models) == 1
    assert [len(layer) for layer in mix.layers] == [samples, 1]
    assert defaults["temperature"] > 0  # sampled, or the proposals would all be the same
    steps = [s for s in plan_steps(mix, 2) if s.layer == 0]
    assert len(steps) == 2 * samples
    assert len({step_seed(0, "row-1", s) for s in steps}) == len(steps)
    # another row draws other samples
    assert {step_seed(0, "row-1", s) for s in steps}.isdisjoint(
        step_seed(0, "row-2", s) for s in steps
    )


def test_self_moa_rehearses_on_one_engine(compose, tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text(
        '{"max_position_embeddings": 8192}'
    )
    cfg = compose("synth", [f"models_dir={tmp_path}", "mixture=self_moa"])
    after = rehearsal.rehearse(
        OmegaConf.to_container(cfg, resolve=True), rehearsal.load_local_cluster(CONF_DIR)
    )
    _, specs, defaults = build.mixture(OmegaConf.create(after["mixture"]))
    assert {s.name for s in specs.values()} == {"WizardLM-2-8x22B"}
    assert defaults["max_tokens"] == 2048
    assert specs["wizardlm_2_8x22b"].engine_name == "rehearsal-smollm2-135m-instruct"
