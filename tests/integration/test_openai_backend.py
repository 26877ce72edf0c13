"""The `openai` backend against a real vLLM OpenAI-compatible server on 127.0.0.1.

A proposer seat served over HTTP (a server the user already runs) mixes with an engine this
run hosts: same mixture code, different backend.

Marked slow (`make test-slow`, ~3.5 min: a vLLM server and an engine start), out of CI's
budget: CI runs the `openai` backend itself in `tests/faults/test_object_storage_resume.py`
(600 rows against the instant stand-in server) and in the unit tests of eval and judge-eval;
what only this test checks is a real vLLM server's answers (usage counts) through it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(models_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(models_dir / "smollm2-135m-instruct"),
        "--served-model-name",
        "smol",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        "4096",
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(2)
    else:
        proc.kill()
        pytest.fail("vLLM server did not come up in 300 s")
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_mixture_with_an_http_proposer(vllm_server, run_synth, tmp_path):
    manifest = run_synth(
        tmp_path,
        [
            "limit=2",
            "record_prompts=true",
            "mixture.sampling.max_tokens=48",
            f"+mixture.models.smol_http={{name: smol-http, backend: openai, base_url: '{vllm_server}', served_name: smol}}",
            "mixture.layers=[[{model: smollm2_135m_instruct}, {model: smol_http}], [{model: smollm2_135m_instruct}]]",
        ],
    )
    assert manifest["counts"]["rows_ok"] == 2
    assert manifest["counts"]["tokens_per_model"]["smol-http"]["completion_tokens"] > 0
    for row in pq.read_table(tmp_path / "sft.parquet").to_pylist():
        http = [c for c in row["calls"] if c["model"] == "smol-http"]
        assert http and all(c["layer"] == 0 and c["seat"] == 1 for c in http)
        for c in http:  # the HTTP answer reached the aggregator like any other
            agg = next(a for a in row["calls"] if a["turn"] == c["turn"] and a["layer"] == 1)
            assert f"\n2. {c['text']}" in json.loads(agg["prompt"])[0]["content"]
