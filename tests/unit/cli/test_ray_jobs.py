"""ray_jobs: the runtime_env users submit with, and the entry modules' forwarding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from ray_jobs import task as task_mod
from ray_jobs.runtime_env import DEFAULT_FILE, build_runtime_env
from tests.conftest import REPO


def test_runtime_env_file_is_offline_and_small():
    env = yaml.safe_load(DEFAULT_FILE.read_text())
    assert env["working_dir"] == "."
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(env)
    for bulky in (".git/", ".venv/", ".models/", "outputs/", "*.parquet", "benchmarks/results/"):
        assert bulky in env["excludes"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and env["env_vars"]["TRANSFORMERS_OFFLINE"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires strings
    assert DEFAULT_FILE.read_text().startswith("# ray job submit")


def test_runtime_env_file_is_valid_for_ray():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    parsed = parse_runtime_env_args(runtime_env=str(DEFAULT_FILE), working_dir=str(REPO))
    RuntimeEnv(**parsed)  # raises on unknown fields or wrong types
    assert parsed["working_dir"] == str(REPO)


def test_build_runtime_env_adds_present_vars_and_absolutizes_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"working_dir": ".", "env_vars": {"HF_HUB_OFFLINE": "1"}}
    environ = {"MOAA_MODELS_DIR": "models", "MOAA_OUTPUT_ROOT": "/abs/out", "OTHER": "x"}
    env = build_runtime_env(base, environ, ["MOAA_MODELS_DIR", "MOAA_OUTPUT_ROOT", "UNSET"])
    assert env["env_vars"] == {
        "HF_HUB_OFFLINE": "1",
        "MOAA_MODELS_DIR": str(tmp_path / "models"),
        "MOAA_OUTPUT_ROOT": "/abs/out",
    }
    assert base["env_vars"] == {"HF_HUB_OFFLINE": "1"}  # input untouched
    env = build_runtime_env(base, {}, [], extra={"HF_HUB_OFFLINE": "0", "N": 3})
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "0", "N": "3"}


@pytest.mark.parametrize("field", ["pip", "conda", "uv"])
def test_build_runtime_env_refuses_run_time_installs(field):
    with pytest.raises(ValueError, match=f"{field}.*offline"):
        build_runtime_env({field: ["vllm"]}, {}, [])


def test_runtime_env_cli(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MOAA_MODELS_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "ray_jobs.runtime_env", "--set", "A=b=c", "--working-dir", "/w"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["working_dir"] == "/w" and got["env_vars"]["A"] == "b=c"
    assert got["env_vars"]["MOAA_MODELS_DIR"] == str(tmp_path)
    assert "MOAA_OUTPUT_ROOT" not in got["env_vars"]
    bad = subprocess.run(
        [sys.executable, "-m", "ray_jobs.runtime_env", "--set", "novalue"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.strip().endswith(
        "--set expects KEY=VALUE, got 'novalue'"
    )


def test_entry_modules_forward_to_their_task():
    """Each ray_jobs/<module>.py runs `moaa <task>` with the module's name (- for _)."""
    modules = sorted(p for p in (REPO / "ray_jobs").glob("*.py") if not p.name.startswith("_"))
    forwarded = {}
    for path in modules:
        m = re.search(r'\brun\("([a-z-]+)"\)', path.read_text())
        if m:
            forwarded[path.stem] = m.group(1)
    assert forwarded == {
        name: name.replace("_", "-")
        for name in (
            "eval", "judge_eval", "pipeline", "prefs", "sample", "synth", "train_dpo", "train_sft"
        )
    }  # fmt: skip


def test_run_forwards_argv_and_exit_code(monkeypatch, capsys):
    calls = []

    def fake_main(argv):
        calls.append(argv)
        return 3

    import moaa_cluster.cli

    monkeypatch.setattr(moaa_cluster.cli, "main", fake_main)
    monkeypatch.delenv("MOAA_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("RAY_OVERRIDE_JOB_RUNTIME_ENV", raising=False)
    with pytest.raises(SystemExit) as exc:
        task_mod.run("synth", ["limit=2", "output_root=/shared/out"])
    assert exc.value.code == 3 and calls == [["synth", "limit=2", "output_root=/shared/out"]]
    assert capsys.readouterr().err == ""
    # the cluster config's env may repeat the job's env_vars: the driver's must be allowed to win
    assert os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"

    with pytest.raises(SystemExit):
        task_mod.run("synth", ["limit=2"])
    assert "outputs go under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        task_mod.run("synth", ["--cfg", "job"])
    assert capsys.readouterr().err == ""


def test_package_main_usage():
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2 and "usage: python -m ray_jobs <task>" in out.stdout
    train = subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", "ppo"], cwd=REPO, capture_output=True, text=True
    )
    assert train.returncode == 2 and "sft|dpo" in train.stderr
