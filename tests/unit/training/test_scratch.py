"""A training worker's scratch directory: named by the run and the rank, so the attempt Ray
Train starts after a worker was killed outright clears what that one left."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from moaa_cluster.training.settings import TrainSettings
from moaa_cluster.training.worker import fresh_dir, scratch_dir


def _settings(data_file: str, kind: str = "dpo") -> TrainSettings:
    return TrainSettings(kind=kind, base_model="/models/m", data_file=data_file)


def test_the_name_is_the_same_for_a_run_and_rank_and_differs_otherwise():
    a = scratch_dir(_settings("/runs/a/train_data.parquet"), 0)
    assert a == scratch_dir(_settings("/runs/a/train_data.parquet"), 0)  # the restarted attempt
    assert a.parent == Path(tempfile.gettempdir()) and a.name.startswith("moaa-dpo-")
    others = {
        scratch_dir(_settings("/runs/a/train_data.parquet"), 1),
        scratch_dir(_settings("/runs/b/train_data.parquet"), 0),
        scratch_dir(_settings("s3://bucket/runs/a/train_data.parquet"), 0),
        scratch_dir(_settings("/runs/a/train_data.parquet", kind="sft"), 0),
    }
    assert a not in others and len(others) == 4


def test_what_a_killed_attempt_left_is_cleared_and_the_directory_removed_after(tmp_path):
    scratch = tmp_path / "moaa-dpo-x-rank0"
    (scratch / "checkpoint-4").mkdir(parents=True)  # a killed attempt's leftovers
    (scratch / "checkpoint-4" / "model.safetensors").write_bytes(b"\0" * 64)
    with fresh_dir(scratch) as d:
        assert d == scratch and list(d.iterdir()) == []
        (d / "checkpoint-2").mkdir()
    assert not scratch.exists()
    with pytest.raises(RuntimeError), fresh_dir(scratch) as d:  # removed on an error too
        (d / "partial").write_text("x")
        raise RuntimeError("training failed")
    assert not scratch.exists()
