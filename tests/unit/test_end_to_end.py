"""Stage bookkeeping of `moaa pipeline`: completeness by manifest, --from, trained specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moaa_cluster import build
from moaa_cluster.cli import _from_flag
from moaa_cluster.end_to_end import STAGES, is_complete, trained_spec
from moaa_cluster.engines.spec import ModelSpec


def _manifest(d: Path, **data) -> None:
    """A manifest as the stage's task writes it (training tasks are `train-<stage>`)."""
    d.mkdir(parents=True, exist_ok=True)
    task = d.name if d.name in ("synth", "prefs", "eval") else f"train-{d.name}"
    (d / "manifest.json").write_text(json.dumps({"task": task, **data}))


def test_synth_and_prefs_complete_only_without_failed_rows(tmp_path):
    assert not is_complete("synth", tmp_path / "synth")
    _manifest(tmp_path / "synth", counts={"rows_ok": 4, "rows_failed": 1})
    assert not is_complete("synth", tmp_path / "synth")
    _manifest(tmp_path / "synth", counts={"rows_ok": 4, "rows_failed": 0})
    assert is_complete("synth", tmp_path / "synth")
    _manifest(tmp_path / "prefs", counts={"pairs": 0, "rows_failed": 0})
    assert not is_complete("prefs", tmp_path / "prefs")  # nothing for DPO to learn from
    _manifest(tmp_path / "prefs", counts={"pairs": 2, "rows_failed": 0})
    assert is_complete("prefs", tmp_path / "prefs")


def test_training_stage_needs_status_and_model(tmp_path):
    d = tmp_path / "sft"
    _manifest(d, status="complete")
    assert not is_complete("sft", d)
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text("{}")
    assert is_complete("sft", d)
    _manifest(d, status="running")
    assert not is_complete("sft", d)


def test_trained_spec_keeps_engine_settings():
    base = ModelSpec(name="smol", path="/m/smol", max_model_len=2048, engine_kwargs={"a": 1})
    spec = trained_spec(base, Path("/run/sft"), "sft")
    assert spec.name == "smol-sft" and spec.path == "/run/sft/model"
    assert spec.max_model_len == 2048 and spec.engine_kwargs == {"a": 1}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--from", "dpo", "seed=1"], ["from_stage=dpo", "seed=1"]),
        (["--from=eval"], ["from_stage=eval"]),
        (["limit=3"], ["limit=3"]),
    ],
)
def test_from_flag(argv, expected):
    assert _from_flag(argv) == expected


def test_pipeline_config_builds_every_stage(compose):
    cfg = compose("pipeline", ["models_dir=/m", "lora@dpo_lora=r16", "prefs.limit=2"])
    parts = build.pipeline(cfg)
    assert parts.sft_settings.kind == "sft" and parts.dpo_settings.kind == "dpo"
    assert parts.dpo_settings.lora["r"] == 16 and parts.sft_settings.lora is None
    assert parts.prefs_limit == 2 and parts.prefs_settings.num_candidates == 3
    assert parts.base.path == "/m/smollm2-135m-instruct"
    assert [s.name for s in parts.eval_sources] == ["embedded_heldout"]
    assert STAGES == ("synth", "sft", "prefs", "dpo", "eval")


def test_block_plan_keeps_rows_in_flight_as_small_concurrent_blocks():
    from moaa_cluster.pipeline.frame import block_plan

    # 64 rows, 32 in flight per worker: 16 blocks of 4, 8 of them at once in a worker
    assert block_plan(64, 32) == (16, 4, 8)
    assert block_plan(24, 32) == (6, 4, 8)
    assert block_plan(3, 1) == (3, 1, 1)  # one row per shard (the resume tests rely on it)
    assert block_plan(24, 4) == (6, 4, 1)
    assert block_plan(64, 32, rows_per_block=32) == (2, 32, 1)  # one big block per worker
    blocks, per_block, _ = block_plan(100_000, 64)
    assert blocks <= 4096 and blocks * per_block >= 100_000  # many rows: bigger blocks


def test_row_worker_records_a_failed_row_and_keeps_the_batch_going():
    import asyncio

    import pyarrow as pa

    from moaa_cluster.pipeline.frame import RowWorker

    class Doubler(RowWorker):
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("value", pa.int64()),
                ("error", pa.string()),
                ("finished_at", pa.float64()),
                ("retries", pa.int32()),
            ]
        )

        def start(self, row):
            return {"id": row["id"], "value": None}

        async def fill(self, row, out):
            if row["x"] < 0:
                raise ValueError("negative input")  # not transient: no retry
            out["value"] = 2 * row["x"]

    batch = pa.Table.from_pylist([{"id": "a", "x": 2}, {"id": "b", "x": -1}])

    async def run():
        return [t async for t in Doubler()(batch)]

    (table,) = asyncio.run(run())
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["a"]["value"] == 4 and rows["a"]["error"] is None
    assert rows["b"]["value"] is None and rows["b"]["error"] == "ValueError: negative input"
    assert all(r["retries"] == 0 and r["finished_at"] > 0 for r in rows.values())


def test_a_pipeline_on_object_storage_keeps_every_stage_and_checkpoint_there(compose, s3):
    """Stage directories, trained checkpoints, overwrite and ``from_stage`` on a URI run
    directory (moto); no stage runs."""
    from moaa_cluster.end_to_end import EVAL_SFT, StageRun
    from moaa_cluster.pipeline.prefs import SAMPLER
    from moaa_cluster.runs import storage
    from moaa_cluster.runs.options import RunOptions

    parts = build.pipeline(compose("pipeline", ["models_dir=/m"]))
    run_dir = s3.uri("pipelines", "p1")
    run = StageRun(parts, RunOptions(run_dir=run_dir), STAGES)
    assert run.dir("sft") == f"{run_dir}/sft"
    assert run.sft_spec.path == f"{run_dir}/sft/model" == run.prefs_specs[SAMPLER].path
    assert run.final.path == f"{run_dir}/dpo/model" == run.eval_specs["model"].path
    for stage in (*STAGES, EVAL_SFT):
        task = stage if stage in ("synth", "prefs", "eval", EVAL_SFT) else f"train-{stage}"
        body = {"task": task, "status": "complete"}
        storage.write_bytes(f"{run_dir}/{stage}/manifest.json", json.dumps(body).encode())
    storage.write_bytes(f"{run_dir}/sft/model/config.json", b"{}")
    assert is_complete("sft", run.dir("sft")) and not is_complete("dpo", run.dir("dpo"))
    run.prepare("dpo")  # dpo and every stage after it are redone
    left = [s for s in (*STAGES, EVAL_SFT) if s3.exists(f"{run_dir}/{s}/manifest.json")]
    assert left == ["synth", "sft", "prefs"]
    assert not s3.exists(f"{run_dir}/.write-test")  # checked writable, probe removed
    StageRun(parts, RunOptions(run_dir=run_dir, overwrite=True), STAGES).prepare(None)
    assert storage.walk_files(run_dir) == []


def test_the_pipeline_task_takes_a_uri_run_directory():
    from moaa_cluster.cli.tasks import URI_TASKS

    assert "pipeline" in URI_TASKS
