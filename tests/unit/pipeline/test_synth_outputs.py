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


# --- truncated final answers: flagged, counted, kept out of SFT data by default ---------------

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from moaa_cluster.errors import ConfigError  # noqa: E402
from moaa_cluster.moa.mixture import Agent, Mixture  # noqa: E402
from moaa_cluster.pipeline.synth_outputs import (  # noqa: E402
    SHARD_SCHEMA,
    final_answer_truncated,
    write_outputs,
)
from moaa_cluster.runs.shards import write_shard  # noqa: E402

MIX = Mixture(layers=((Agent("p1"), Agent("p2")), (Agent("agg"),)))


def _call(turn: int, layer: int, seat: int, finish: str) -> dict:
    model = "agg" if layer == 1 else f"p{seat + 1}"
    return {
        "turn": turn, "layer": layer, "seat": seat, "model": model, "text": f"{model}-{turn}",
        "prompt_tokens": 5, "completion_tokens": 7, "finish_reason": finish, "seconds": 0.1,
        "prompt": None, "context": None, "system_folded": False,
    }  # fmt: skip


def _row(i: int, calls: list[dict]) -> dict:
    return {
        "id": f"r{i}", "source": "s", "source_id": str(i), "system": None, "turns": ["q"],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "calls": calls, "error": None, "finished_at": 1.0, "retries": 0,
    }  # fmt: skip


def _shards(tmp_path) -> None:
    rows = [
        # a proposer cut off, the aggregated answer finished: trained on
        _row(0, [_call(0, 0, 0, "length"), _call(0, 0, 1, "stop"), _call(0, 1, 0, "stop")]),
        # the aggregated answer cut off: ends mid-sentence
        _row(1, [_call(0, 0, 0, "stop"), _call(0, 0, 1, "stop"), _call(0, 1, 0, "length")]),
        # two turns, the second turn's final answer cut off
        _row(2, [_call(0, 1, 0, "stop"), _call(1, 0, 0, "stop"), _call(1, 1, 0, "length")]),
        _row(3, [_call(0, 0, 0, "stop"), _call(0, 1, 0, "stop")]),
    ]
    write_shard(tmp_path, pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))


def test_only_a_final_layer_call_cut_at_max_tokens_makes_a_row_truncated():
    assert final_answer_truncated([_call(0, 1, 0, "length")], final_layer=1)
    assert not final_answer_truncated([_call(0, 0, 0, "length"), _call(0, 1, 0, "stop")], 1)
    assert final_answer_truncated([_call(0, 1, 0, "stop"), _call(1, 1, 0, "length")], 1)
    assert not final_answer_truncated([], 1)


def test_truncated_rows_are_left_out_of_sft_data_by_default_and_counted(tmp_path):
    _shards(tmp_path)
    counts = write_outputs(tmp_path, MIX, [])
    assert counts["rows_ok"] == 4
    assert (counts["rows_truncated"], counts["rows_truncated_excluded"]) == (2, 2)
    assert counts["rows_sft"] == 2
    sft = pq.read_table(tmp_path / "sft.parquet").to_pylist()
    assert sorted(r["id"] for r in sft) == ["r0", "r3"]
    assert not any(r["truncated"] for r in sft)
    cut = pq.read_table(tmp_path / "sft_truncated.parquet").to_pylist()
    assert sorted(r["id"] for r in cut) == ["r1", "r2"] and all(r["truncated"] for r in cut)
    text = "\n".join(summary_lines(counts, {}, tmp_path))
    assert "truncated: 2 rows end in a final answer cut off" in text
    assert "excluded from sft.parquet" in text and "(2 rows)" in text


def test_truncated_keep_trains_on_them_flagged_and_removes_a_stale_excluded_file(tmp_path):
    _shards(tmp_path)
    write_outputs(tmp_path, MIX, [])  # the default run wrote sft_truncated.parquet
    counts = write_outputs(tmp_path, MIX, [], truncated="keep")  # a rerun that keeps them
    assert (counts["rows_truncated"], counts["rows_truncated_excluded"]) == (2, 0)
    sft = {r["id"]: r["truncated"] for r in pq.read_table(tmp_path / "sft.parquet").to_pylist()}
    assert sft == {"r0": False, "r1": True, "r2": True, "r3": False}
    assert not (tmp_path / "sft_truncated.parquet").exists()
    assert "kept in sft.parquet, flagged" in "\n".join(summary_lines(counts, {}, tmp_path))


def test_an_unknown_truncated_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not one of"):
        write_outputs(tmp_path, MIX, [], truncated="drop")
