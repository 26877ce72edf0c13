"""`moaa pipeline` on the embedded default at toy size: every stage on the real stack.

synth (vLLM via Ray Serve, Ray Data) -> SFT (TRL under Ray Train) -> candidates sampled by the
SFT checkpoint in vLLM + the MoA judge -> DPO with LoRA (merged) under Ray Train -> the DPO
checkpoint in vLLM against the base model, judged -> report. Then the same command again:
every stage is found complete and skipped.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

STAGES = ("synth", "sft", "prefs", "dpo", "eval")
PIPELINE = [sys.executable, "-m", "moaa_cluster.cli", "pipeline"]
# every stage at toy size (also `test_pipeline_object_storage.py`)
TOY = [
    "progress=false",
    "synth.limit=4",
    "mixture.sampling.max_tokens=64",
    "synth.truncated=keep",  # at 64 tokens most final answers are cut off: SFT on all 4
    "train_sft.args.max_steps=3",
    "prefs.limit=3",
    "prefs.num_candidates=3",  # round robin: 3 pairs, 6 judged orders per prompt
    "prefs.sampling.max_tokens=48",
    "prefs.truncated=allow",  # at 48 tokens nearly every candidate is cut off
    "judge.sampling.max_tokens=64",
    "judge.verdict_sampling.max_tokens=96",
    "train_dpo.args.max_steps=2",
    "lora@dpo_lora=r16",
    "eval.limit=3",
    "eval.sampling.max_tokens=48",
    "eval.resamples=200",
]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _changed(a: dict, b: dict) -> int:
    import torch

    return sum(not torch.equal(a[k].float(), b[k].float()) for k in a if k in b)


def test_pipeline_end_to_end_then_skips_when_complete(tmp_path: Path, models_dir: Path):
    # run from a scratch directory with a relative output root, as a user would: Ray Train
    # workers and engine replicas do not share the driver's cwd
    out_root = tmp_path / "outputs"
    cmd = [*PIPELINE, "output_root=outputs", *TOY]
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    first = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-5000:])
    run = out_root / "pipeline-embedded-smollm2-135m-instruct"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["skipped"] == []
    assert set(manifest["timings_s"]) == {*STAGES, "total"}
    print("stage wall times (s):", manifest["timings_s"])

    # synth: the MoA rows SFT trains on
    sft_rows = pq.read_table(run / "synth" / "sft.parquet").to_pylist()
    assert len(sft_rows) == 4

    # SFT under Ray Train: finite losses, weights moved, a loadable checkpoint
    sft = json.loads((run / "sft" / "manifest.json").read_text())
    assert sft["status"] == "complete" and sft["counts"]["steps"] == 3
    assert sft["counts"]["rows"] == 4
    losses = [
        json.loads(line)["loss"]
        for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    base = _tensors(models_dir / "smollm2-135m-instruct")
    sft_w = _tensors(run / "sft" / "model")
    assert _changed(sft_w, base) > 0

    # prefs: candidates came from the SFT checkpoint served by vLLM
    prefs = json.loads((run / "prefs" / "manifest.json").read_text())
    sampler = prefs["models"]["sampler"]
    assert sampler["path"] == str(run / "sft" / "model")
    pairs = pq.read_table(run / "prefs" / "prefs.parquet").to_pylist()
    assert 1 <= len(pairs) <= 3
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        assert p["prompt"][-1]["role"] == "user"

    # DPO from the SFT checkpoint, LoRA merged into plain weights
    dpo = json.loads((run / "dpo" / "manifest.json").read_text())
    assert dpo["base_model"] == str(run / "sft" / "model")
    assert dpo["settings"]["lora"]["r"] == 16 and dpo["counts"]["steps"] == 2
    assert not (run / "dpo" / "model" / "adapter_config.json").exists()
    dpo_w = _tensors(run / "dpo" / "model")
    assert set(dpo_w) == set(sft_w)  # merged: the base architecture's tensors, no lora_ keys
    assert _changed(dpo_w, sft_w) > 0

    # eval: the SFT checkpoint (eval_sft/), then the DPO one (eval/), answered in vLLM against
    # the base model's answers (generated once, by the SFT evaluation) under the pipeline's
    # protocol, AlpacaEval 2: one judge call per question, re-asked constrained to m/M when
    # the packaged judge names neither
    for stage, model in (
        ("eval_sft", "smollm2-135m-instruct-sft"),
        ("eval", "smollm2-135m-instruct-dpo"),
    ):
        summary = json.loads((run / stage / "summary.json").read_text())
        assert summary["model"] == model and summary["baseline"] == "smollm2-135m-instruct"
        assert summary["evaluated"] == 3
        p = summary["protocol"]
        assert p["headline"]["protocol"] == "alpaca_eval2" and p["judged"] + p["unparsed"] == 3
        assert p["judged"] >= 1 and 0 <= p["win_rate"] <= 100
        judged = pq.read_table(run / stage / "judgments.parquet").to_pylist()
        assert all(0 <= r["preference"] <= 1 for r in judged if r["preference"] is not None)
        answers = pq.read_table(run / stage / "answers.parquet").to_pylist()
        assert len(answers) == 3 and all(a for a in answers)
    assert (run / "eval_sft" / "baseline_answers.parquet").exists()
    short = (run / "report.md").read_text().split("## Cost")[0]
    assert short.index("- **eval_sft**") < short.index("- **eval**")
    assert "alpaca_eval2 vs smollm2-135m-instruct: LC win rate" in short

    # the same command again: all complete, nothing starts
    t0 = time.monotonic()
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["skipped"] == list(STAGES)
    assert "engine(s)" not in again.stdout + again.stderr  # no engine was started
    for s in STAGES:
        assert f"== {s}: complete" in again.stdout
    print(f"rerun with every stage complete: {time.monotonic() - t0:.0f} s")
