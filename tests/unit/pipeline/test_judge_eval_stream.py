"""`moaa judge-eval` storage to storage: pairs read by Ray Data tasks, the table counted where
the shards are.

The first test runs ``evaluate_judges`` whole on real Ray Data, its judges answering through
the ``openai`` backend from the instant stand-in server (``benchmarks/standin_server.py``):
what is under test is the reading, resume, shards and counting, not the judging (the
stand-in's fixed words never name a verdict, so every pair is a tie). The second test counts
hand-written shards whose outcomes are known.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from moaa_cluster.judge.judge import summarize
from moaa_cluster.pipeline.judge_eval import SHARD_SCHEMA, evaluate_judges
from moaa_cluster.pipeline.judge_eval_outputs import tally_run
from moaa_cluster.pipeline.judge_pairs import load_pairs
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import shard_dir, write_shard

MODELS = ("smollm2_135m_instruct", "gemma_3_270m")


def _hh(q: str, a: str) -> str:
    return f"\n\nHuman: {q}\n\nAssistant: {a}"


def _pairs_file(path) -> None:
    records = [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."},
        {"chosen": _hh("Say hi.", "Hi!"), "rejected": _hh("Say hi.", "No.")},
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
        {"prompt": "Colour of snow?", "chosen": "White", "rejected": "Green"},
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(2, '{"prompt": "cut off')  # line 3: malformed
    lines.insert(4, lines[0])  # line 5: the pair of line 1 again
    lines.append(json.dumps({"prompt": "no answers"}))  # line 8: not a pair
    path.write_text("\n".join(lines) + "\n")


def _shards(run_dir) -> list[dict]:
    return pads.dataset(str(shard_dir(run_dir)), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def standin():
    from benchmarks.standin_server import serve

    with serve(tokens=8) as url:
        yield url


def _judges(compose, url: str):
    from omegaconf import OmegaConf

    from moaa_cluster import build

    over = ["pairs=unused", "judge.sampling.max_tokens=16"]
    for m in MODELS:
        over += [f"++judge.models.{m}.backend=openai", f"++judge.models.{m}.base_url={url}"]
    cfg = compose("judge_eval", over)
    judge, specs = build.judge(cfg.judge)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    return [judge, judge.single(judge.aggregator)], specs, cluster


def test_pairs_stream_in_resume_and_are_counted_once(tmp_path, compose, ray_local, standin):
    pairs_file = tmp_path / "pairs.jsonl"
    _pairs_file(pairs_file)
    want, want_rejects = load_pairs(pairs_file)
    unique = sorted({p["id"] for p in want})
    assert len(want) == 6 and len(unique) == 5  # the driver reader keeps the repeat
    judges, specs, cluster = _judges(compose, standin)
    run_dir = tmp_path / "run"

    def run(limit):
        opts = RunOptions(run_dir, cluster, limit=limit, progress=False, keep_engines=True)
        table = evaluate_judges(pairs_file, judges, specs, opts, batch_size=2, workers=1)
        return table, json.loads((run_dir / "manifest.json").read_text())

    # first 3 pairs in read order, then the whole file: only the 2 new pairs are judged
    table, first = run(3)
    assert first["counts"]["judged"] == 3 and first["counts"]["rows_resumed"] == 0
    assert [r["pairs"] for r in table] == [3, 3]
    first_ids = {r["id"] for r in _shards(run_dir)}
    assert first_ids == {p["id"] for p in want[:3]}
    table, again = run(None)
    c = again["counts"]
    assert (c["pairs"], c["judged"], c["rows_resumed"], c["rows_failed"]) == (5, 5, 3, 0)
    rows = _shards(run_dir)
    assert sorted(Counter(r["id"] for r in rows).values()) == [1] * 5, "each pair judged once"
    assert sorted(r["id"] for r in rows) == unique
    kept = {r["id"]: r for r in rows}
    assert all(
        kept[i]["finished_at"] < min(r["finished_at"] for r in rows if r["id"] not in first_ids)
        for i in first_ids
    )

    # rejects: the malformed line, the repeat (naming line 1), the record that is no pair
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    where = {r["where"].rsplit(":", 1)[1]: r["reason"] for r in rejects}
    assert set(where) == {"3", "5", "8"} and c["rejects_input"] == 3
    assert where["5"] == "duplicate of pairs.jsonl:1 (same pair)"
    assert [r for r in rejects if r["where"] != "pairs.jsonl:5"] == want_rejects

    # the table, counted by the blocks, is the one the shard rows give
    for t, judge in zip(table, judges, strict=True):
        per = [json.loads(r["results"])[judge.name] for r in rows]
        counts = summarize([cmp for p in per for cmp in p["comparisons"]])
        assert t["pairs"] == 5 and t["calls"] == counts["calls"] > 0
        assert t["ties"] == sum(p["outcome"] == "tie" for p in per) / 5
        assert t["prompt_tokens"] == counts["prompt_tokens"]
        assert t["parse_fail_after"] == counts["verdict_unresolved"] / counts["comparisons"]
    saved = json.loads((run_dir / "judge_eval.json").read_text())
    assert saved["table"] == table and saved["pairs"] == 5 and saved["rejects"] == 3
    assert (run_dir / "judge_eval.md").read_text().startswith("| judge |")


def _result(outcome: str, calls: int) -> dict:
    cmp = {
        "calls": calls,
        "prompt_tokens": 10 * calls,
        "completion_tokens": calls,
        "parse": "ok" if outcome != "tie" else "none",
        "recovered": False,
        "winner": None if outcome == "tie" else int(outcome),
        "criteria_fallback": False,
    }
    return {"outcome": outcome, "comparisons": [cmp, {**cmp, "calls": 1}]}


def _row(i: str, outcome: str | None, error: str | None = None, at: float = 1.0, retries=0):
    results = None if outcome is None else json.dumps({"j": _result(outcome, 3)})
    return {"id": i, "results": results, "error": error, "finished_at": at, "retries": retries}


def test_block_counts_add_up_to_the_table_of_the_wanted_finished_rows(tmp_path, ray_local):
    import ray

    from moaa_cluster.pipeline.instructions import id_array_ref

    run_dir = tmp_path / "run"
    shards = [
        [_row("a", "0"), _row("b", "1", retries=2), _row("c", None, "boom", at=1.0, retries=1)],
        [_row("c", "0", at=5.0), _row("d", "tie")],  # c: failed, then finished by a rerun
        [_row("e", None, "first", at=1.0), _row("e", None, "last", at=2.0)],  # never finished
        [_row("x", "0")],  # a pair of another input on the same run directory: not counted
    ]
    for rows in shards:
        write_shard(run_dir, pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
    wanted = id_array_ref(ray.data.from_items([{"id": i} for i in "abcde"]))
    tally = tally_run(run_dir, SHARD_SCHEMA, ["j"], wanted)
    (row,) = tally.table
    assert row["pairs"] == tally.judged == 4
    assert (row["accuracy"], row["wrong"], row["ties"]) == (0.5, 0.25, 0.25)
    assert row["position_consistency"] == 0.75
    assert row["calls"] == 4 * (3 + 1) and row["prompt_tokens"] == 4 * (30 + 30)
    assert row["parse_fail_before"] == row["parse_fail_after"] == 2 / 8  # d's two orders
    assert [(f["id"], f["error"]) for f in tally.failed] == [("e", "last")]
    assert tally.retried == 1  # b; c's retried failure was superseded by its success
