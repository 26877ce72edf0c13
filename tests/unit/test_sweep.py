"""The sweep summary: manifests of sweep points -> one table (markdown + JSON).

The last tests run real Hydra multiruns over the real ``conf/synth.yaml`` with a task
function that only writes a manifest (no Ray), through the CLI's own wrapper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from moaa_cluster.sweep import (
    build_summary,
    format_markdown,
    point_record,
    token_totals,
    write_summary,
)

REPO = Path(__file__).resolve().parents[2]

SYNTH = {
    "task": "synth",
    "counts": {
        "rows_ok": 2,
        "rows_failed": 0,
        "rejects_input": 1,
        "tokens_per_model": {
            "smollm2": {"calls": 6, "prompt_tokens": 900, "completion_tokens": 150},
            "gemma": {"calls": 2, "prompt_tokens": 80, "completion_tokens": 60},
        },
        "finish_reasons": {"stop": 5, "length": 3},
    },
    "timings_s": {"read": 1.0, "engine_start": 70.0, "generation": 20.0, "total": 93.5},
    "ray": {"placement_groups_left": [], "ray": "shut down"},
}
PREFS = {
    "task": "prefs",
    "counts": {
        "pairs": 3,
        "rows_failed": 0,
        "judge": {"comparisons": 20, "prompt_tokens": 5000, "completion_tokens": 700},
        "verdict_parse_failure_rate": 0.25,
    },
    "timings_s": {"read": 0.5, "sample_and_judge": 40.0},
}


def _manifest(dir_: Path, manifest: dict) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "manifest.json").write_text(json.dumps(manifest))
    return dir_


def test_tokens_are_summed_wherever_a_manifest_counts_them():
    assert token_totals(SYNTH["counts"]) == {"prompt": 980, "completion": 210}
    assert token_totals(PREFS["counts"]) == {"prompt": 5000, "completion": 700}
    assert token_totals({"rows": 4, "steps": 2}) is None  # a training run reports none
    assert token_totals({"a": [{"prompt_tokens": 1, "completion_tokens": 2}]}) == {
        "prompt": 1,
        "completion": 2,
    }


def test_point_record_reads_counts_tokens_wall_time_and_cleanup(tmp_path: Path):
    run = _manifest(tmp_path / "0-synth", SYNTH)
    rec = point_record(0, ["mixture=embedded", "limit=2"], run)
    assert rec["status"] == "ok" and rec["task"] == "synth"
    # only scalar counts become columns; per-model dicts stay in the manifest
    assert rec["counts"] == {"rows_ok": 2, "rows_failed": 0, "rejects_input": 1}
    assert rec["tokens"] == {"prompt": 980, "completion": 210}
    assert rec["wall_s"] == 93.5
    assert rec["manifest"] == str(run / "manifest.json")
    # no `total`: the wall time is the sum of the phases
    assert point_record(1, [], _manifest(tmp_path / "p", PREFS))["wall_s"] == 40.5


def test_point_record_metrics_losses_and_status_from_other_tasks(tmp_path: Path):
    train = {
        "task": "train-dpo",
        "status": "complete",
        "counts": {"rows": 8, "rejected": 0, "steps": 2},
        "losses": {"first": 0.69, "last": 0.61},
        "timings_s": {"train": 30.0, "total": 41.0},
    }
    rec = point_record(0, ["train.args.beta=0.1"], _manifest(tmp_path / "t", train))
    assert rec["status"] == "ok"
    assert rec["metrics"] == {"losses.first": 0.69, "losses.last": 0.61}
    evaluation = {"task": "eval", "status": "incomplete", "summary": {"win_rate": {"mean": 0.4}}}
    rec = point_record(1, [], _manifest(tmp_path / "e", evaluation))
    assert rec["status"] == "incomplete" and rec["metrics"] == {"summary.win_rate.mean": 0.4}


def test_missing_manifest_and_failed_point(tmp_path: Path):
    assert point_record(0, [], tmp_path / "none")["status"] == "no manifest"
    rec = point_record(1, [], tmp_path / "none", status="FAILED", error="RuntimeError: boom")
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: boom"


def test_summary_lists_shared_overrides_once_and_each_point_by_what_differs(tmp_path: Path):
    common = ["limit=2", "mixture.sampling.max_tokens=32"]
    points = [
        point_record(1, ["mixture=b", *common], _manifest(tmp_path / "1-b", SYNTH)),
        point_record(0, ["mixture=a", *common], _manifest(tmp_path / "0-a", SYNTH)),
    ]
    summary = build_summary(points, sweep_dir=tmp_path)
    assert summary["task"] == "synth"
    assert summary["common_overrides"] == common
    assert [p["num"] for p in summary["points"]] == [0, 1]  # ordered by job number
    assert [p["point"] for p in summary["points"]] == [["mixture=a"], ["mixture=b"]]
    assert summary["count_columns"] == ["rows_ok", "rows_failed", "rejects_input"]

    md = format_markdown(summary)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| #"))
    assert header.split(" | ")[1:4] == ["point", "status", "rows_ok"]
    row_a = next(line for line in lines if line.startswith("| 0 |"))
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells[:6] == ["0", "mixture=a", "ok", "2", "0", "1"]
    assert cells[-5:] == ["980", "210", "93.5", "clean", "0-a"]  # output relative to the sweep
    assert "every point: `limit=2 mixture.sampling.max_tokens=32`" in md


def test_columns_are_the_union_and_cells_escape_pipes(tmp_path: Path):
    leaky = {**SYNTH, "ray": {"placement_groups_left": ["SERVE_REPLICA::x#y#z"]}}
    points = [
        point_record(0, ["a=1|2"], _manifest(tmp_path / "0", leaky)),
        point_record(1, ["a=3"], _manifest(tmp_path / "1", PREFS)),
        point_record(2, ["a=4"], tmp_path / "2", status="FAILED", error="ValueError: x"),
    ]
    summary = build_summary(points, sweep_dir=tmp_path)
    assert summary["count_columns"] == [
        "rows_ok",
        "rows_failed",
        "rejects_input",
        "pairs",
        "verdict_parse_failure_rate",
    ]
    md = format_markdown(summary)
    assert "a=1\\|2" in md and "1 PGs left" in md and "failed: ValueError: x" in md
    header_cells = next(line for line in md.splitlines() if line.startswith("| #")).count(" | ")
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            assert line.count(" | ") == header_cells  # every row has every column


def test_write_summary_writes_both_files(tmp_path: Path):
    summary = build_summary([point_record(0, ["x=1"], _manifest(tmp_path / "0", SYNTH))])
    md, js = write_summary(tmp_path / "sweep", summary)
    assert md.read_text() == format_markdown(summary)
    assert json.loads(js.read_text())["points"][0]["tokens"] == {"prompt": 980, "completion": 210}
    assert not list((tmp_path / "sweep").glob(".*.tmp"))


# --- real Hydra multiruns over conf/synth.yaml, a manifest-writing task, no Ray ----------

DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from moaa_cluster import cli

    def fake_synth(cfg):
        if cfg.seed == 13:
            raise RuntimeError("point failed on purpose")
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        counts = {"rows_ok": int(cfg.seed) + 1, "rows_failed": 0, "rejects_input": 0}
        (out / "manifest.json").write_text(json.dumps(
            {"task": "synth", "counts": counts, "timings_s": {"total": 1.5}}))

    sys.exit(cli._hydra_task("synth", "synth", sys.argv[1:], cli._guarded("synth", fake_synth)))
    """
)


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.run(
        [sys.executable, str(script), "-m", f"output_root={tmp_path / 'out'}", *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_multirun_gives_points_with_one_run_name_their_own_dirs_and_a_summary(tmp_path: Path):
    proc = _multirun(tmp_path, "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "out" / "sweeps").iterdir()
    # both points have run_name synth-embedded-embedded_demo: without their own dirs the
    # second would resume the first's rows
    dirs = sorted(d.name for d in sweep.iterdir() if d.is_dir())
    assert dirs == ["0-synth-embedded-embedded_demo", "1-synth-embedded-embedded_demo"]
    assert not (tmp_path / "out" / "synth-embedded-embedded_demo").exists()
    for i, d in enumerate(dirs):
        assert json.loads((sweep / d / "manifest.json").read_text())["counts"]["rows_ok"] == i + 1
    summary = json.loads((sweep / "summary.json").read_text())
    assert [p["point"] for p in summary["points"]] == [["seed=0"], ["seed=1"]]
    assert [p["counts"]["rows_ok"] for p in summary["points"]] == [1, 2]
    assert summary["points"][1]["output_dir"] == str(sweep / dirs[1])
    assert f"output_root={tmp_path / 'out'}" in summary["common_overrides"]
    md = (sweep / "summary.md").read_text()
    assert md in proc.stdout  # printed at the end of the sweep
    assert f"sweep summary: {sweep / 'summary.md'}" in proc.stdout


def test_a_failed_point_is_in_the_summary_and_fails_the_sweep(tmp_path: Path):
    proc = _multirun(tmp_path, "seed=0,13")
    assert proc.returncode != 0
    (sweep,) = (tmp_path / "out" / "sweeps").iterdir()
    points = json.loads((sweep / "summary.json").read_text())["points"]
    assert [p["status"] for p in points] == ["ok", "failed"]
    assert points[1]["error"] == "RuntimeError: point failed on purpose"


def test_points_sharing_an_explicit_output_dir_are_refused(tmp_path: Path):
    proc = _multirun(tmp_path, "seed=0,1", f"output_dir={tmp_path / 'same'}")
    assert proc.returncode == 1
    assert "sweep points 0 and 1 both write" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_single_run_keeps_its_stable_directory_and_writes_no_summary(tmp_path: Path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script), f"output_root={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "synth-embedded-embedded_demo" / "manifest.json").exists()
    assert not (tmp_path / "out" / "sweeps").exists()
