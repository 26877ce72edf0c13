"""Bad configurations fail with a one-line error before any engine starts (real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _moaa(*args: str, models_dir=None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if models_dir is not None:
        env["MOAA_MODELS_DIR"] = str(models_dir)
    return subprocess.run(
        [sys.executable, "-m", "moaa_cluster.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, moaa_cluster.cli as c; c.main(['--help']);"
        "heavy = [m for m in ('ray', 'vllm', 'torch', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "synth" in proc.stdout and "models" in proc.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nosuchkey=1"], "Could not override 'nosuchkey'"),
        (["models_dir=/nonexistent/models"], "no checkpoint at /nonexistent/models"),
        (["output_root=/proc/moaa-outputs"], "is not writable"),
        (
            # 3 divides the 135M model's 9 query heads, so only the CPU placement is wrong
            ["mixture.models.smollm2_135m_instruct.tensor_parallel_size=3", "limit=1"],
            "tensor_parallel_size 3 needs GPUs",
        ),
        (
            ["mixture.models.smollm2_135m_instruct.tensor_parallel_size=2", "limit=1"],
            "tensor_parallel_size 2 must divide num_attention_heads 9",
        ),
        (["mixture.layers=[[{model: smollm2_135m_instruct}]]"], "at least two layers"),
    ],
)
def test_bad_config_is_a_one_line_error(overrides, message, models_dir, tmp_path):
    extra = (
        [] if any(o.startswith("output_root") for o in overrides) else [f"output_root={tmp_path}"]
    )
    proc = _moaa("synth", *overrides, *extra, models_dir=models_dir)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "engines ready" not in proc.stdout + proc.stderr
