"""The synth summary a user reads at the end of a run."""

from pathlib import Path

from moaa_cluster.pipeline.synth_outputs import summary_lines

COUNTS = {
    "rows_ok": 38,
    "multi_turn_rows": 8,
    "rows_failed": 0,
    "rejects_input": 2,
    "tokens_per_model": {"m": {"calls": 3, "prompt_tokens": 10, "completion_tokens": 5}},
}


def test_summary_reports_rows_tokens_time_and_output():
    text = "\n".join(summary_lines(COUNTS, {"generation": 12.34}, Path("/r")))
    assert "rows: 38 ok (8 multi-turn), 0 failed in inference, 2 rejected on input" in text
    assert "m: 3 calls, 10 prompt + 5 generated tokens" in text
    assert "generation 12.3s" in text and "/r/sft.parquet" in text
    assert "WARNING" not in text


def test_summary_tells_how_to_retry_failed_rows():
    text = "\n".join(summary_lines({**COUNTS, "rows_failed": 3}, {}, Path("/r")))
    assert "WARNING: 3 rows failed in inference" in text and "rerun the same command" in text
