"""Kill the Ray Train worker of a running `moaa train-dpo`: Ray Train restarts it from the
latest checkpoint and the run finishes without redoing the steps before it (issue #5)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED

HH = SHARED / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"


def _hh_preferences(path: Path, n: int) -> Path:
    """Real HH-RLHF pairs in TRL's preference format (conversational prompt, one-turn answers)."""
    from moaa_cluster.pipeline.judge_pairs import to_labeled_pair

    rows = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            pair = to_labeled_pair(json.loads(line))
            if sum(len(m["content"]) for m in pair["prompt"]) > 600:
                continue  # short dialogues keep the steps fast
            rows.append(
                {
                    "prompt": pair["prompt"],
                    "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                    "rejected": [{"role": "assistant", "content": pair["rejected"]}],
                }
            )
            if len(rows) == n:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _registered_checkpoints(snapshot: Path) -> int:
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results") or [])
    except (OSError, ValueError):
        return 0  # not written yet, or caught mid-write


def _train_workers() -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if title.startswith("ray::RayTrainWorker"):
            out.append(p)
    return out


def test_dpo_resumes_after_its_worker_is_killed(tmp_path: Path, models_dir: Path):
    if not HH.exists():
        pytest.skip(f"{HH} not available")
    import psutil

    data = _hh_preferences(tmp_path / "prefs.jsonl", 12)
    out_root = tmp_path / "outputs"
    steps, save_every = 6, 2
    cmd = [
        sys.executable,
        "-m",
        "moaa_cluster.cli",
        "train-dpo",
        f"output_root={out_root}",
        f"data={data}",
        f"train.args.max_steps={steps}",
        f"train.args.save_steps={save_every}",
        "train.args.max_length=256",
        "run_name=dpo-kill",
    ]
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    run_dir = out_root / "dpo-kill"
    # what the workers leave in the node's temp dir: their scratch and checkpoint downloads
    tmp = Path(tempfile.gettempdir())
    left_before = set(tmp.glob("moaa-dpo-*")) | set(tmp.glob("checkpoint_tmp_*"))
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        # wait until Ray Train has registered a checkpoint (its controller's snapshot lists
        # it; the files alone appear before that), then kill the worker process outright
        snapshot = run_dir / "ray_train" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if _registered_checkpoints(snapshot):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"training ended before the kill:\n{log.read_text()[-3000:]}"
        workers = _train_workers()
        assert workers, "no RayTrainWorker process found to kill"
        for w in workers:
            w.send_signal(9)
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert not any(psutil.pid_exists(w.pid) and w.status() != "zombie" for w in workers)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    train = manifest["train"]
    assert train["global_step"] == steps
    # restarted from a checkpoint, not from scratch
    assert train["resumed_from_step"] >= save_every
    assert f"resumed from the checkpoint at step {train['resumed_from_step']}" in text
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [h["step"] for h in history if "loss" in h]
    # every step logged exactly once: the steps before the checkpoint were not trained again
    assert loss_steps == list(range(1, steps + 1))
    assert all(h["loss"] == h["loss"] and abs(h["loss"]) < 1e3 for h in history if "loss" in h)
    model = run_dir / "model"
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()
    assert (model / "tokenizer_config.json").exists()
    # the killed worker could not clean up; the attempt that replaced it did, then its own
    # (before: a 1.6 GB scratch copy and a checkpoint download left in /tmp per kill)
    left = set(tmp.glob("moaa-dpo-*")) | set(tmp.glob("checkpoint_tmp_*"))
    assert left <= left_before, sorted(map(str, left - left_before))
