"""What a judge-eval run reports, counted where the shards are.

One Ray Data pass over the run's shards (``runs.shards.shard_dataset``): each block keeps the
pairs of this run's input (an ``is_in`` against the ids of the pairs read), counts per judge
what the table needs (pairs, correct, wrong, ties, and the comparisons' calls, tokens and
parse failures: all sums) and returns those counts and its failed rows. The driver adds the
counts of the blocks and gets the failures (few), never the judged rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from moaa_cluster.judge.judge import summarize
from moaa_cluster.pipeline.instructions import cached_ids
from moaa_cluster.runs import storage
from moaa_cluster.runs.shards import finished_among, last_failures, shard_dataset, shard_dir

_OUTCOMES = {"0": "correct", "1": "wrong", "tie": "ties"}


def judge_counts(rows: list[dict], judges: list[str]) -> dict[str, dict]:
    """Per judge name, sums over finished shard rows: ``pairs``, ``correct`` (both orders
    prefer the labeled chosen answer), ``wrong``, ``ties`` and :func:`judge.summarize`'s
    counts of the comparisons."""
    results = [json.loads(r["results"]) for r in rows]  # each row's JSON parsed once
    out = {}
    for name in judges:
        per = [r[name] for r in results]
        counts = {"pairs": len(per), "correct": 0, "wrong": 0, "ties": 0}
        for p in per:  # any other outcome (a verdict unresolved) is a pair, none of these
            if p["outcome"] in _OUTCOMES:
                counts[_OUTCOMES[p["outcome"]]] += 1
        out[name] = {**counts, **summarize([c for p in per for c in p["comparisons"]])}
    return out


def add_counts(total: dict[str, dict], part: dict[str, dict]) -> dict[str, dict]:
    """``total`` plus ``part``, judge by judge and count by count."""
    for name, counts in part.items():
        mine = total.setdefault(name, {})
        for k, v in counts.items():
            mine[k] = mine.get(k, 0) + v
    return total


def metrics_table(counts: dict[str, dict], judges: list[str]) -> list[dict]:
    """One table row per judge (in ``judges``' order) from its summed counts."""
    table = []
    for name in judges:
        c = counts.get(name) or judge_counts([], [name])[name]
        n, cmps = max(1, c["pairs"]), max(1, c["comparisons"])
        table.append(
            {
                "judge": name,
                "pairs": c["pairs"],
                "accuracy": c["correct"] / n,
                "wrong": c["wrong"] / n,
                "ties": c["ties"] / n,
                "position_consistency": (c["correct"] + c["wrong"]) / n,
                "parse_fail_before": c["verdict_unparsed"] / cmps,
                "parse_fail_after": c["verdict_unresolved"] / cmps,
                "criteria_fallback": c["criteria_fallback"] / cmps,
                "calls": c["calls"],
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
            }
        )
    return table


def block_tally(batch: pa.Table, judges: list[str], wanted) -> pa.Table:
    """Ray Data step: one row of counts for a block of shard rows (those of ``wanted``, an
    object ref of the input's ids): the judges' counts, finished and retried rows, and the
    failed rows' ``id``/``error``/``finished_at``/``retries`` (JSON)."""
    batch = batch.filter(pc.is_in(batch["id"], value_set=cached_ids(wanted)))
    done = batch.filter(pc.is_null(batch["error"]))
    failed = batch.filter(pc.invert(pc.is_null(batch["error"])))
    finished = done.select(["results", "retries"]).to_pylist()
    return pa.table(
        {
            "counts": [json.dumps(judge_counts(finished, judges))],
            "finished": [len(finished)],
            "retried": [sum(1 for r in finished if r["retries"])],
            "failed": [
                json.dumps(failed.select(["id", "error", "finished_at", "retries"]).to_pylist())
            ],
        }
    )


@dataclass
class Tally:
    """A run's judge-eval results: the metrics table, the pairs judged, the failed ones (the
    last failure of each pair that never finished) and the rows retried."""

    table: list[dict]
    judged: int = 0
    retried: int = 0
    failed: list[dict] = field(default_factory=list)


def tally_run(run_dir: Path | str, schema: pa.Schema, judges: list[str], wanted) -> Tally:
    """The :class:`Tally` of the shards of ``run_dir`` (``schema``) for the ``wanted`` ids."""
    files = storage.list_files(shard_dir(run_dir), ".parquet")
    if not files:
        return Tally(metrics_table({}, judges))
    shards = shard_dataset(files, schema)
    counts: dict[str, dict] = {}
    judged = retried = 0
    failed: list[dict] = []
    parts = shards.map_batches(
        block_tally,
        fn_kwargs={"judges": judges, "wanted": wanted},
        batch_format="pyarrow",
        batch_size=None,
    ).take_all()
    for part in parts:
        add_counts(counts, json.loads(part["counts"]))
        judged += part["finished"]
        retried += part["retried"]
        failed += json.loads(part["failed"])
    failed = last_failures(failed, finished_among(shards, {r["id"] for r in failed}))
    retried += sum(1 for r in failed if r["retries"])
    return Tally(metrics_table(counts, judges), judged, retried, failed)
