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
    assert "generation 12.3s" in text and "output: /r/sft/ (38 rows" in text
    assert "also as sft.parquet" in text and "WARNING" not in text
    alone = "\n".join(summary_lines(COUNTS, {}, Path("/r"), single_file=False))
    assert "no single file" in alone


def test_summary_tells_how_to_retry_failed_rows():
    text = "\n".join(summary_lines({**COUNTS, "rows_failed": 3}, {}, Path("/r")))
    assert "WARNING: 3 rows failed in inference" in text and "rerun the same command" in text


# --- truncated final answers: flagged, counted, kept out of SFT data by default ---------------

import json  # noqa: E402

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


def test_truncated_rows_are_left_out_of_sft_data_by_default_and_counted(tmp_path, ray_local):
    _shards(tmp_path)
    counts = write_outputs(tmp_path, MIX)
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
    assert "excluded from sft.parquet" in text and "(2 rows;" in text


def test_truncated_keep_trains_on_them_flagged_and_removes_a_stale_excluded_file(
    tmp_path, ray_local
):
    _shards(tmp_path)
    write_outputs(tmp_path, MIX)  # the default run wrote sft_truncated.parquet
    counts = write_outputs(tmp_path, MIX, truncated="keep")  # a rerun that keeps them
    assert (counts["rows_truncated"], counts["rows_truncated_excluded"]) == (2, 0)
    sft = {r["id"]: r["truncated"] for r in pq.read_table(tmp_path / "sft.parquet").to_pylist()}
    assert sft == {"r0": False, "r1": True, "r2": True, "r3": False}
    assert not (tmp_path / "sft_truncated.parquet").exists()
    assert "kept in sft.parquet, flagged" in "\n".join(summary_lines(counts, {}, tmp_path))


def test_an_unknown_truncated_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not one of"):
        write_outputs(tmp_path, MIX, truncated="drop")


def test_the_output_is_a_parquet_dataset_datasets_reads_and_the_single_file_is_optional(
    tmp_path, ray_local
):
    import datasets

    _shards(tmp_path)
    # an earlier row that failed and then finished, and one that failed twice (never finished)
    failed = [{**_row(3, []), "error": "boom"}, {**_row(9, []), "error": "first"}]
    write_shard(tmp_path, pa.Table.from_pylist(failed, schema=SHARD_SCHEMA))
    write_shard(
        tmp_path,
        pa.Table.from_pylist([{**_row(9, []), "error": "again", "finished_at": 2.0}], SHARD_SCHEMA),
    )
    counts = write_outputs(tmp_path, MIX, single_file=False)
    assert (counts["rows_ok"], counts["rows_sft"], counts["rows_failed"]) == (4, 2, 1)
    assert not (tmp_path / "sft.parquet").exists()
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sft"), split="train")
    assert ds["id"] == ["r0", "r3"] and ds.column_names[:2] == ["id", "source"]
    cut = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sft_truncated"))["train"]
    assert sorted(cut["id"]) == ["r1", "r2"]
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["where"], r["reason"]) for r in rejects] == [("r9", "again")]
    # the small-run option: one file each, the same rows as the directories
    write_outputs(tmp_path, MIX, single_file=True)
    assert pq.read_table(tmp_path / "sft.parquet")["id"].to_pylist() == ["r0", "r3"]
    assert sorted(pq.read_table(tmp_path / "sft_truncated.parquet")["id"].to_pylist()) == [
        "r1",
        "r2",
    ]


def test_block_counts_vectorized_agree_with_the_row_by_row_counts():
    from moaa_cluster.pipeline.synth_outputs import block_counts, finished_block, run_counts

    cut_ctx = {**_call(0, 0, 0, "length"), "context": '{"cut": [], "budget": 8}'}
    rows = [
        _row(0, [_call(0, 0, 0, "length"), _call(0, 0, 1, "stop"), _call(0, 1, 0, "stop")]),
        {**_row(1, [cut_ctx, _call(0, 1, 0, "length")]), "retries": 2, "turns": ["q", "q2"]},
        _row(2, []),
        {**_row(3, [_call(0, 1, 0, "length")]), "error": "boom"},
    ]
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    ok = [r for r in rows if r["error"] is None]
    counts = block_counts(table, final_layer=1, excluded=True)
    assert {k: counts[k] for k in run_counts(ok, [], [])} == run_counts(ok, [], [])
    assert (counts["rows_truncated"], counts["rows_truncated_excluded"]) == (1, 1)
    assert counts["rows_sft"] == 2
    flags = {r["id"]: r["truncated"] for r in finished_block(table, 1).to_pylist()}
    assert flags == {r["id"]: final_answer_truncated(r["calls"], 1) for r in ok}
