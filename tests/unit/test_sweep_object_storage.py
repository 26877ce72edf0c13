"""Sweeps whose ``output_root`` is on object storage, through a real S3-compatible server (moto,
``tests/s3_server.py``): Hydra's own files stay in a local directory named after the URI, while
each point's run directory and the summary go under the URI, one sweep name for both.

The multirun test runs a real Hydra multirun over the real ``conf/synth.yaml`` with a task
function that only writes a manifest (no Ray), through the CLI's own wrapper, as
``tests/unit/test_sweep.py`` does for a local ``output_root``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from moaa_cluster.evaluation.table import write_table
from moaa_cluster.runs import storage
from moaa_cluster.runs.sweep_dirs import hydra_root, point_dir
from moaa_cluster.sweep import write_summary


def test_hydra_root_is_the_local_root_itself_or_a_local_directory_named_after_the_uri():
    assert hydra_root("outputs") == "outputs"
    assert hydra_root("/abs/runs") == "/abs/runs"
    assert hydra_root("s3://bucket/runs/x/") == str(Path("outputs/hydra/s3/bucket/runs/x"))
    assert hydra_root("gs://b") == str(Path("outputs/hydra/gs/b"))
    assert ":" not in hydra_root("s3://bucket/a/../b")  # nothing climbs out of it either
    assert ".." not in Path(hydra_root("s3://bucket/a/../b")).parts


def test_point_dir_maps_the_local_job_dir_to_the_same_place_under_the_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = Path(hydra_root("s3://b/runs"), "sweeps", "synth-1", "0-x")
    assert point_dir(job, "s3://b/runs") == "s3://b/runs/sweeps/synth-1/0-x"
    assert point_dir(job.parent, "s3://b/runs/") == "s3://b/runs/sweeps/synth-1"
    # a local output_root, or a sweep directory the user put elsewhere: the job dir itself
    assert point_dir("out/sweeps/s/0-x", "out") == tmp_path / "out/sweeps/s/0-x"
    assert point_dir(tmp_path / "elsewhere", "s3://b/runs") == tmp_path / "elsewhere"


def test_summary_and_eval_table_are_written_to_object_storage(s3):
    sweep = s3.uri("sweeps", uuid.uuid4().hex[:8], "eval-1")
    run = f"{sweep}/0-eval-a"
    storage.write_bytes(
        f"{run}/summary.json",
        json.dumps(
            {
                "model": "sft",
                "baseline": "base",
                "judge_name": "single:j",
                "evaluated": 4,
                "win_rate": {"win_rate": 0.5, "ci_low": 0.4, "ci_high": 0.6},
            }
        ).encode(),
    )
    summary = {
        "task": "eval",
        "sweep_dir": sweep,
        "common_overrides": [],
        "count_columns": [],
        "metric_columns": [],
        "points": [{"num": 0, "point": [], "status": "ok", "output_dir": run, "counts": {}}],
    }
    md, js = write_summary(sweep, summary)
    assert (md, js) == (f"{sweep}/summary.md", f"{sweep}/summary.json")
    assert json.loads(s3.read(js))["points"][0]["output_dir"] == run
    assert "| 0-eval-a |" in s3.read(md).decode()  # shown relative to the sweep
    table = write_table(sweep, [run])
    assert table == f"{sweep}/table.md" and s3.exists(f"{sweep}/table.json")
    assert s3.read(table).decode().startswith("| model |")
    assert json.loads(s3.read(f"{sweep}/table.json"))["models"] == ["sft"]


DRIVER = textwrap.dedent(
    """
    import json, sys
    from moaa_cluster import cli
    from moaa_cluster.runs import storage

    def fake_synth(cfg):
        assert storage.is_uri(str(cfg.output_dir)), cfg.output_dir
        counts = {"rows_ok": int(cfg.seed) + 1, "rows_failed": 0, "rejects_input": 0}
        storage.write_bytes(storage.join(cfg.output_dir, "manifest.json"), json.dumps(
            {"task": "synth", "counts": counts, "timings_s": {"total": 1.5}}).encode())

    sys.exit(cli._hydra_task("synth", "synth", sys.argv[1:], cli._guarded("synth", fake_synth)))
    """
)


def test_a_sweep_with_a_uri_output_root_writes_its_points_and_summary_there(tmp_path, s3):
    root = s3.uri("runs", uuid.uuid4().hex[:8])
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script), "-m", f"output_root={root}", "seed=0,1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Hydra's own files: local, in a directory named after the URI; never a local `s3:`
    assert not [p for p in tmp_path.rglob("*") if ":" in p.name]
    local_root = tmp_path / hydra_root(root)
    (local_sweep,) = (local_root / "sweeps").iterdir()
    assert (local_sweep / "multirun.yaml").exists()
    # the points and the summary: under the URI, in the sweep of the same name
    sweep = f"{root}/sweeps/{local_sweep.name}"
    summary = json.loads(s3.read(f"{sweep}/summary.json"))
    assert summary["sweep_dir"] == sweep
    dirs = [p["output_dir"] for p in summary["points"]]
    assert dirs == [f"{sweep}/{i}-synth-embedded-embedded_demo" for i in (0, 1)]
    assert [p["counts"]["rows_ok"] for p in summary["points"]] == [1, 2]
    assert [p["manifest"] for p in summary["points"]] == [f"{d}/manifest.json" for d in dirs]
    md = s3.read(f"{sweep}/summary.md").decode()
    assert md in proc.stdout
    assert f"sweep summary: {sweep}/summary.md" in proc.stdout
    # nothing of the run itself in the local directory (Hydra's job dirs stay empty)
    assert not [p for p in local_sweep.rglob("*") if p.is_file() and p.name != "multirun.yaml"]
