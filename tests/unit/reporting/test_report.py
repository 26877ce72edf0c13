"""`moaa report` on small synthetic run directories: detection, plots, cost table, gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.reporting import detect, main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _synth(d: Path) -> None:
    _write(
        d / "manifest.json",
        {
            "task": "synth",
            "counts": {
                "rows_ok": 2,
                "rows_failed": 0,
                "rejects_input": 1,
                "multi_turn_rows": 0,
                "tokens_per_model": {
                    "small": {"calls": 4, "prompt_tokens": 400, "completion_tokens": 200},
                    "big": {"calls": 2, "prompt_tokens": 100, "completion_tokens": 300},
                },
            },
            "timings_s": {"read": 1.0, "engine_start": 30.0, "generation": 50.0, "total": 81.0},
            "config": {"cluster": {"num_gpus": 0, "accelerator_type": None}},
        },
    )
    call = {
        "turn": 0,
        "layer": 0,
        "seat": 0,
        "model": "small",
        "text": "t",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "finish_reason": "stop",
        "seconds": 2.0,
        "prompt": None,
    }
    rows = [
        {
            "id": "a",
            "calls": [call, {**call, "model": "big", "seconds": 4.0, "finish_reason": "length"}],
        },
        {"id": "b", "calls": [call]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "sft.parquet")


def _prefs(d: Path) -> None:
    _write(
        d / "manifest.json",
        {
            "task": "prefs",
            "counts": {
                "pairs": 2,
                "candidate_sets": 2,
                "skipped_identical": 0,
                "skipped_no_preference": 0,
                "rows_failed": 0,
                "judge": {
                    "comparisons": 12,
                    "calls": 48,
                    "prompt_tokens": 9000,
                    "completion_tokens": 1500,
                    "verdict_unparsed": 3,
                    "verdict_unresolved": 1,
                },
            },
            "timings_s": {"engine_start": 20.0, "sample_and_judge": 100.0, "total": 125.0},
            "judge": {"name": "embedded"},
        },
    )
    judge = json.dumps(
        {
            "pairs": [
                {"i": 0, "j": 1, "outcome": "0"},
                {"i": 0, "j": 2, "outcome": "tie"},
                {"i": 1, "j": 2, "outcome": "2"},
            ],
            "comparisons": [],
        }
    )
    rows = [
        {
            "candidate_tokens": [10, 20, 30],
            "scores": [2.0, 0.5, 0.5],
            "chosen_index": 0,
            "rejected_index": 2,
            "judge": judge,
        },
        {
            "candidate_tokens": [5, 5, 5],
            "scores": [1.0, 1.5, 0.5],
            "chosen_index": 1,
            "rejected_index": 2,
            "judge": judge,
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "prefs.parquet")


def _eval(d: Path) -> None:
    summary = {
        "model": "dpo",
        "baseline": "base",
        "judge_name": "embedded",
        "judged_on": "full conversation",
        "questions": 5,
        "evaluated": 4,
        "failed": 0,
        "rejected": 1,
        "unresolved": 0,
        "win_rate": {
            "n": 4,
            "wins": 2,
            "ties": 1,
            "losses": 1,
            "win_rate": 0.625,
            "ci_low": 0.25,
            "ci_high": 1.0,
            "lc_win_rate": 0.6,
            "lc_ci_low": 0.2,
            "lc_ci_high": 0.9,
            "confidence": 0.95,
            "resamples": 100,
        },
        "by_source": {
            "s": {
                "n": 4,
                "wins": 2,
                "ties": 1,
                "losses": 1,
                "win_rate": 0.625,
                "ci_low": 0.25,
                "ci_high": 1.0,
                "lc_win_rate": None,
                "lc_ci_low": None,
                "lc_ci_high": None,
                "confidence": 0.95,
                "resamples": 100,
            }
        },
        "judge": {
            "comparisons": 8,
            "calls": 32,
            "verdict_unparsed": 1,
            "verdict_recovered": 1,
            "verdict_unresolved": 0,
            "position_consistency": 0.75,
            "verdict_parse_failure_rate": 0.125,
            "verdict_unresolved_rate": 0.0,
        },
        "tokens_per_model": {
            "dpo": {"calls": 4, "prompt_tokens": 80, "completion_tokens": 400},
            "judge:embedded": {"calls": 32, "prompt_tokens": 6000, "completion_tokens": 900},
        },
        "timings_s": {"read": 2.0, "engine_start": 40.0, "answer_and_judge": 60.0, "total": 102.0},
    }
    _write(d / "summary.json", summary)
    _write(
        d / "manifest.json",
        {
            "task": "eval",
            "timings_s": summary["timings_s"],
            "cluster": {"num_gpus": 0, "accelerator_type": None},
        },
    )


def _train(d: Path) -> None:
    _write(
        d / "manifest.json",
        {
            "task": "train-dpo",
            "status": "complete",
            "counts": {"rows": 8, "steps": 3},
            "losses": {"first": 0.69, "last": 0.6},
            "scaling": {"num_workers": 2, "use_gpu": True},
            "timings_s": {"train": 3600.0, "total": 3700.0},
        },
    )
    (d / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.7 - 0.03 * s}) + "\n" for s in (1, 2, 3))
    )


@pytest.fixture()
def pipeline_dir(tmp_path):
    root = tmp_path / "pipe"
    _synth(root / "synth")
    _prefs(root / "prefs")
    _train(root / "dpo")
    _eval(root / "eval")
    _write(
        root / "manifest.json",
        {
            "task": "pipeline",
            "stages": {
                "synth": str(root / "synth"),
                "sft": str(root / "sft"),
                "prefs": str(root / "prefs"),
                "dpo": str(root / "dpo"),
                "eval": str(root / "eval"),
            },
        },
    )
    return root


def test_detects_every_kind(pipeline_dir, tmp_path):
    assert detect(pipeline_dir) == "pipeline"
    assert detect(pipeline_dir / "synth") == "synth"
    assert detect(pipeline_dir / "prefs") == "prefs"
    assert detect(pipeline_dir / "dpo") == "train"
    assert detect(pipeline_dir / "eval") == "eval"
    je = tmp_path / "je"
    _write(je / "judge_eval.json", {"table": [], "timings_s": {"total": 1.0}})
    assert detect(je) == "judge-eval"
    assert detect(tmp_path / "empty") is None


def test_pipeline_report_has_plots_costs_and_gaps(pipeline_dir):
    prices = {
        "models": {
            "small": {"input": 1.0, "output": 2.0},
            "default": {"input": 0.5, "output": 0.5},
        },
        "gpu_hour": 2.0,
    }
    path = write_report(pipeline_dir, prices=prices)
    text = path.read_text()
    for png in ("timings", "tokens", "throughput", "judge", "scores", "win_rates", "loss"):
        f = pipeline_dir / "plots" / f"{png}.png"
        assert f.read_bytes()[:8] == PNG_MAGIC, png
        assert f"(plots/{png}.png)" in text
    assert "stage sft has no output yet" in text  # listed in the manifest, never written
    # cost rows: synth's small model at $1 / $2 per 1M tokens, dpo on 2 GPUs for 3700 s
    assert "| synth | small | 4 | 400 | 200 |" in text
    assert f"{(400 * 1.0 + 200 * 2.0) / 1e6:.4f}" in text
    assert (
        f"| dpo | (stage) |  |  |  | 3700.0 | 2 (Ray Train workers) | {3700 / 3600 * 2:.4f} | "
        f"{3700 / 3600 * 2 * 2.0:.4f} |" in text
    )
    assert "| synth | (stage) |  |  |  | 81.0 | 0 (CPU cluster) | 0.0000 | 0.0000 |" in text
    assert "| prefs | judge:embedded | 48 | 9,000 | 1,500 |" in text
    assert "| all | 4 | 2 | 1 | 1 | 62.5 [25.0, 100.0] | 60.0 [20.0, 90.0] |" in text
    assert "Mean judge score: chosen 1.75, rejected 0.50" in text
    assert "| small | 2 | 2.00 | stop 2 |" in text and "| big | 1 | 4.00 | length 1 |" in text


def test_single_run_dir_and_missing_pieces(tmp_path, capsys):
    d = tmp_path / "prefs-run"
    _prefs(d)
    (d / "prefs.parquet").unlink()
    assert main([str(d)]) == 0
    text = (d / "report.md").read_text()
    assert "skipped: no prefs.parquet" in text
    assert "Scores of chosen vs rejected: skipped" in text
    assert "report:" in capsys.readouterr().out
    # a run dir with nothing recognizable still gets a page that says so
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main([str(empty)]) == 0
    assert "Nothing to report" in (empty / "report.md").read_text()


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moaa report: error:") and err.count("\n") == 1
    bad = tmp_path / "prices.yaml"
    bad.write_text("- just a list\n")
    d = tmp_path / "e"
    _eval(d)
    assert main([str(d), "--prices", str(bad)]) == 1
    assert "expected a mapping" in capsys.readouterr().err


def test_stage_order_and_cluster_fallback_before_the_pipeline_manifest(tmp_path):
    root = tmp_path / "pipe"
    _eval(root / "eval")
    _synth(root / "synth")
    _write(root / "eval" / "manifest.json", {"task": "eval", "timings_s": {"total": 36.0}})
    text = write_report(root, cluster={"num_gpus": 4}).read_text()
    assert text.index("## synth (synth)") < text.index("## eval (eval)")  # run order
    # the eval manifest has no cluster: the one passed in counts (synth keeps its own, CPU)
    assert "| eval | (stage) |  |  |  | 36.0 | 4 (cluster.num_gpus) | 0.0400 |" in text
    assert "| synth | (stage) |  |  |  | 81.0 | 0 (CPU cluster) |" in text


def test_gpus_flag_and_unknown_gpu_count(tmp_path):
    d = tmp_path / "e"
    _eval(d)
    _write(
        d / "manifest.json",
        {"task": "eval", "cluster": {"accelerator_type": "A100-80G", "num_gpus": None}},
    )
    text = write_report(d).read_text()
    assert "GPU count not in the cluster config" in text
    text = write_report(d, gpus=8, gpu_hour_usd=1.5).read_text()
    assert f"| 8 (--gpus) | {102 / 3600 * 8:.4f} | {102 / 3600 * 8 * 1.5:.4f} |" in text


def test_a_pipeline_report_opens_with_a_plain_summary(pipeline_dir):
    text = write_report(pipeline_dir).read_text()
    assert text.index("## In short") < text.index("## Cost")
    short = text[text.index("## In short") : text.index("## Cost")]
    assert "- **synth** (synth, 81 s): 2 SFT conversations" in short
    assert f"-> `{pipeline_dir / 'synth'}`" in short
    assert "- **dpo** (train, " in short and "loss " in short
    assert "win rate 62.5% [25, 100]" in short
    assert "Stages took" in short
    assert "What the numbers mean here" not in short  # models "small"/"big" are not packaged


def test_the_summary_says_what_toy_numbers_mean_when_packaged_models_served(pipeline_dir):
    m = json.loads((pipeline_dir / "synth" / "manifest.json").read_text())
    m["models"] = {"smollm2_135m_instruct": {"name": "smollm2-135m-instruct"}}
    m["counts"].update({"rows_truncated_excluded": 3, "rows_sft": 2})
    _write(pipeline_dir / "synth" / "manifest.json", m)
    short = write_report(pipeline_dir).read_text().split("## Cost")[0]
    assert "What the numbers mean here" in short and "say nothing about the method" in short
    assert "2 SFT conversations (3 left out: final answer cut off at max_tokens)" in short


def test_a_single_task_report_has_no_pipeline_summary(tmp_path):
    _synth(tmp_path / "s")
    assert "## In short" not in write_report(tmp_path / "s").read_text()


def test_the_summary_puts_the_sft_evaluation_before_the_final_one_with_its_metric(pipeline_dir):
    # the pipeline's SFT evaluation (eval_sft/, not listed in its manifest) under AlpacaEval 2
    d = pipeline_dir / "eval_sft"
    headline = {"protocol": "alpaca_eval2", "metric": "LC win rate", "unit": "%"}
    protocol = {
        "judged": 4,
        "unparsed": 0,
        "recovered": 4,
        "headline": {**headline, "value": 45.6, "low": 25.1, "high": 67.9},
        "win_rate": 50.4,
    }
    _write(
        d / "summary.json",
        {
            "model": "sft",
            "baseline": "base",
            "judge_name": "single:g",
            "questions": 4,
            "evaluated": 4,
            "failed": 0,
            "rejected": 0,
            "protocol": protocol,
        },
    )
    _write(d / "manifest.json", {"task": "eval", "timings_s": {"total": 50.0}})
    short = write_report(pipeline_dir).read_text().split("## Cost")[0]
    assert "sft: alpaca_eval2 vs base: LC win rate 45.6% [25, 68]" in short
    assert short.index("- **eval_sft**") < short.index("- **eval**")


def test_a_synth_run_written_as_a_dataset_directory_is_reported(tmp_path):
    """``synth.single_file=false``: the rows are read from ``sft/``."""
    run = tmp_path / "synth"
    _synth(run)
    (run / "sft").mkdir()
    (run / "sft.parquet").rename(run / "sft" / "part-0.parquet")
    text = write_report(run).read_text()
    assert "no sft.parquet" not in text and "2 conversations" in text


def test_report_of_a_pipeline_on_object_storage(pipeline_dir, s3, capsys):
    """`moaa report s3://...`: read from the bucket, report.md and plots written back there."""
    import uuid

    import pyarrow.fs as pafs

    from moaa_cluster.runs import storage

    uri = s3.uri("reports", uuid.uuid4().hex[:8], "pipe")
    storage.copy_tree(pafs.LocalFileSystem(), str(pipeline_dir), uri)
    storage.write_bytes(storage.join(uri, "synth", "shards", "part-1.parquet"), b"not read")
    assert main([uri]) == 0
    assert f"report: {uri}/report.md" in capsys.readouterr().out
    remote = s3.read(f"{uri}/report.md").decode()
    local = write_report(pipeline_dir).read_text()
    assert f"moaa report {uri}" in remote and "/tmp/moaa-report-" not in remote

    def headings(t):
        return [line for line in t.splitlines() if line.startswith("#")]

    assert headings(remote)[1:] == headings(local)[1:]  # the same sections, by the run's name
    plots = s3.fs.get_file_info(pafs.FileSelector(s3.key(f"{uri}/plots")))
    assert plots and all(s3.read(f"s3://{p.path}").startswith(PNG_MAGIC) for p in plots)
    assert main([s3.uri("no-such-run")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_pipeline_writes_its_report_next_to_a_run_on_object_storage(pipeline_dir, s3):
    """`moaa pipeline output_dir=s3://...` ends with the report written back into the bucket
    (it once tried a local path, failed and only logged it)."""
    import uuid

    import pyarrow.fs as pafs

    from moaa_cluster.end_to_end import _report
    from moaa_cluster.runs import storage

    uri = s3.uri("reports", uuid.uuid4().hex[:8], "pipeline-run")
    storage.copy_tree(pafs.LocalFileSystem(), str(pipeline_dir), uri)
    assert _report(uri, {"num_cpus": 2}) == f"{uri}/report.md"
    assert s3.read(f"{uri}/report.md").decode().startswith("# Run report: pipeline-run")
