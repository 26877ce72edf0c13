"""Offline defaults: hub and telemetry off, settings handed to every engine, no remote code,
the Ray dashboard on loopback, and sweeps wired to the summary callback."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moaa_cluster import runtime
from moaa_cluster.engines.spec import spec_from_dict
from tests.conftest import TELEMETRY_OFF

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture
def clean_env(monkeypatch):
    for key in [*runtime.OFFLINE_ENV, *runtime.ENGINE_ENV, "MY_SETTING"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(runtime, "_cluster_env_keys", set())
    return monkeypatch


def test_offline_is_the_default(clean_env):
    import os

    runtime.set_offline()
    assert {k: os.environ[k] for k in TELEMETRY_OFF} == TELEMETRY_OFF


def test_a_users_explicit_choice_wins_and_cluster_env_applies(clean_env):
    import os

    clean_env.setenv("HF_HUB_OFFLINE", "0")  # the user enabled the hub on purpose
    runtime.set_offline({"MY_SETTING": 3, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    env = runtime.worker_env()
    assert env["HF_HUB_OFFLINE"] == "0" and env["MY_SETTING"] == "3"
    assert {k: env[k] for k in TELEMETRY_OFF if k != "HF_HUB_OFFLINE"} == {
        k: v for k, v in TELEMETRY_OFF.items() if k != "HF_HUB_OFFLINE"
    }


def test_engines_get_the_offline_settings_and_no_remote_code(clean_env):
    """A Serve deployment with its own runtime_env does not inherit the job's: ours is full."""
    from moaa_cluster.engines.serve_llm import llm_config

    clean_env.setenv("VLLM_HOST_IP", "10.0.0.5")  # this node's address in the user's shell
    runtime.set_offline({"VLLM_CPU_KVCACHE_SPACE": "1", "MY_SETTING": "x"})
    cfg = llm_config(spec_from_dict("m", {"path": "/models/m"}))
    env = cfg.runtime_env["env_vars"]
    assert {k: env[k] for k in TELEMETRY_OFF} == TELEMETRY_OFF
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["MY_SETTING"] == "x"
    assert "VLLM_HOST_IP" not in env  # node-specific: engines on other nodes must not get it
    assert cfg.engine_kwargs["trust_remote_code"] is False
    # the local cluster config sets it on purpose (one node): then every engine gets it
    local = OmegaConf.to_container(OmegaConf.load(CONF / "cluster" / "local.yaml"))
    runtime.set_offline(local["env"])
    env = llm_config(spec_from_dict("m", {"path": "/models/m"})).runtime_env["env_vars"]
    assert env["VLLM_HOST_IP"] == "127.0.0.1"


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_model_config_trusts_remote_code(path: Path):
    raw = OmegaConf.to_container(OmegaConf.load(path))
    assert not raw.get("trust_remote_code")
    assert not (raw.get("engine_kwargs") or {}).get("trust_remote_code")
    assert spec_from_dict(path.stem, {"path": "/x"}).trust_remote_code is False


@pytest.mark.parametrize("path", sorted((CONF / "cluster").glob("*.yaml")), ids=lambda p: p.stem)
def test_ray_dashboard_binds_loopback(path: Path):
    raw = OmegaConf.load(path)
    assert raw.dashboard_host == "127.0.0.1"


def test_local_cluster_starts_no_dashboard_and_keeps_vllm_on_loopback():
    local = OmegaConf.load(CONF / "cluster" / "local.yaml")
    assert local.dashboard is False
    assert local.env.VLLM_HOST_IP == "127.0.0.1"  # else vLLM probes 8.8.8.8 for an address


@pytest.mark.parametrize(
    ("dashboard", "usage_stats", "skipped"),
    [(False, "0", True), (True, "0", False), (False, "1", False)],
)
def test_ray_api_server_is_skipped_only_without_dashboard_and_usage_stats(
    monkeypatch, dashboard: bool, usage_stats: str, skipped: bool
):
    from ray._private import services

    original = services.start_api_server
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", usage_stats)
    with runtime._no_usage_stats_server(skip=not dashboard):
        assert (services.start_api_server is not original) is skipped
        if skipped:
            assert services.start_api_server(False, False, "127.0.0.1") == (None, None)
    assert services.start_api_server is original


@pytest.mark.parametrize(
    "task", ["synth", "prefs", "sample", "judge_eval", "train_sft", "train_dpo", "eval", "pipeline"]
)
def test_sweepable_tasks_write_the_sweep_summary(task: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = ["pairs=/x.jsonl"] if task == "judge_eval" else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=task, overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.callbacks.sweep_summary._target_ == "moaa_cluster.sweep.SweepSummary"
    # each point runs in its own job directory under the sweep directory
    assert "${hydra.job.num}" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]
