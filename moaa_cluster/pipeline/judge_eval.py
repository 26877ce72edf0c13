"""Judge evaluation: accuracy of the MoA judge and each single judge on labeled pairs.

Input: labeled pairs (``judge_pairs``: generic ``{prompt, chosen, rejected}`` or HH-RLHF's
``{chosen, rejected}``), streamed from storage to storage as synth's instructions are: Ray
Data read tasks validate them and write the rejects, duplicates and the pairs an earlier run
finished are dropped there, the workers write the shards, and the table is counted where the
shards are (``judge_eval_outputs``). Every pair is judged by every judge in both orders.
Reported per judge: accuracy (both orders prefer the labeled chosen answer), position
consistency (both orders agree), verdict parse failures before and after recovery, criteria
fallbacks, calls and tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.sources import Source
from moaa_cluster.engines.describe import model_record
from moaa_cluster.judge.costs import calls_per_pair
from moaa_cluster.judge.judge import JudgeSpec, judge_pair
from moaa_cluster.pipeline.frame import (
    PoolSettings,
    RowWorker,
    StreamJob,
    shard_schema,
    stream_dataset,
)
from moaa_cluster.pipeline.instructions import drop_finished, id_array_ref, read_valid
from moaa_cluster.pipeline.judge_eval_outputs import Tally, tally_run
from moaa_cluster.pipeline.judge_pairs import PAIRS
from moaa_cluster.runs.datasets import concat_rejects
from moaa_cluster.runs.files import save_json
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.storage import join, write_bytes
from moaa_cluster.runs.task_run import TaskRun

SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("results", pa.string()),  # JSON: {judge name: {outcome, comparisons}}
    ]
)


class JudgeEvalWorker(RowWorker):
    """Ray Data actor: every judge on every pair of a batch, both orders."""

    schema = SHARD_SCHEMA

    def __init__(
        self, judges: list[JudgeSpec], specs: dict, request_timeout_s: float | None = 900.0
    ):
        from moaa_cluster.engines.backends import make_backend

        self.judges = judges
        self.backends = {k: make_backend(s, request_timeout_s) for k, s in specs.items()}

    def start(self, row: dict) -> dict:
        return {"id": row["id"], "results": None}

    async def fill(self, row: dict, out: dict) -> None:
        answers = [row["chosen"], row["rejected"]]
        done = await asyncio.gather(
            *(
                judge_pair(j, self.backends, row["prompt"], answers, 0, 1, key=row["id"])
                for j in self.judges
            )
        )
        out["results"] = json.dumps(
            {
                j.name: {"outcome": str(res.outcome), "comparisons": cmps}
                for j, (res, cmps) in zip(self.judges, done, strict=True)
            },
            ensure_ascii=False,
        )


def format_table(table: list[dict]) -> str:
    cols = [
        ("judge", "{}"),
        ("pairs", "{}"),
        ("accuracy", "{:.3f}"),
        ("ties", "{:.3f}"),
        ("position_consistency", "{:.3f}"),
        ("parse_fail_before", "{:.3f}"),
        ("parse_fail_after", "{:.3f}"),
        ("criteria_fallback", "{:.3f}"),
        ("calls", "{}"),
        ("prompt_tokens", "{}"),
        ("completion_tokens", "{}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        lines.append("| " + " | ".join(f.format(row[c]) for c, f in cols) + " |")
    return "\n".join(lines)


def _pool(
    n_pairs: int, judges: list[JudgeSpec], batch_size: int, workers: int, opts: RunOptions
) -> PoolSettings:
    return PoolSettings(
        batch_size=batch_size,
        workers=workers,
        desc="judge-eval",
        progress=opts.progress,
        calls=n_pairs * sum(calls_per_pair(j) for j in judges),  # each pair, every judge
    )


def evaluate_judges(
    pairs_path: Path | str,
    judges: list[JudgeSpec],
    specs: dict,
    opts: RunOptions,
    *,
    batch_size: int = 4,
    workers: int = 2,
) -> list[dict]:
    """Judges every labeled pair with every judge; writes and prints the metrics table.

    ``pairs_path``: a pairs file, a directory or a saved ``datasets`` directory of them,
    local or on object storage. A rerun of the run directory judges only the pairs it has
    not finished.
    """
    from moaa_cluster.engines import host as engine_host

    run = TaskRun.open(opts, specs.values())
    engine_host.preflight(opts.cluster, list(specs.values()))
    names = [j.name for j in judges]
    with engine_host.hosting(
        opts.cluster, keep=opts.keep_engines, timings=run.timings, report=run.ray
    ) as host:
        t0 = time.monotonic()
        source = Source("pairs", path=str(pairs_path))
        pairs = read_valid([source], run.run_dir, limit=opts.limit, kind=PAIRS)
        n_pairs = pairs.count()
        todo = drop_finished(pairs, run.run_dir)
        n_todo = todo.count() if n_pairs else 0
        run.timings["read"] = time.monotonic() - t0
        if n_todo:
            host.use(list(specs.values()))
            _judge(
                todo, n_todo, judges, specs, _pool(n_todo, judges, batch_size, workers, opts), run
            )
        t0 = time.monotonic()
        tally = tally_run(run.run_dir, SHARD_SCHEMA, names, id_array_ref(pairs))
        n_rejects = concat_rejects(run.run_dir, _failure_rejects(tally))
        run.timings["write"] = time.monotonic() - t0
    read = {"pairs": n_pairs, "rejects_input": n_rejects, "rows_resumed": n_pairs - n_todo}
    return _write_results(run, tally, read, specs)


def _write_results(run: TaskRun, tally: Tally, read: dict, specs: dict) -> list[dict]:
    """``judge_eval.md``, ``judge_eval.json`` and the manifest; prints the table."""
    table = tally.table
    run.timings["total"] = run.elapsed()
    text = format_table(table)
    write_bytes(join(run.run_dir, "judge_eval.md"), (text + "\n").encode())
    save_json(
        join(run.run_dir, "judge_eval.json"),
        {
            "table": table,
            "timings_s": run.timings,
            "pairs": read["pairs"],
            "rejects": read["rejects_input"],
        },
    )
    counts = {
        **read,
        "judged": tally.judged,
        "rows_failed": len(tally.failed),
        "rows_retried": tally.retried,
        "per_judge": {
            row["judge"]: {k: row[k] for k in ("calls", "prompt_tokens", "completion_tokens")}
            for row in table
        },
    }
    metrics_record = {
        row["judge"]: {k: row[k] for k in ("accuracy", "position_consistency", "parse_fail_after")}
        for row in table
    }
    models = {k: model_record(s) for k, s in specs.items()}
    run.save_manifest("judge-eval", counts, models, {"metrics": metrics_record})
    print(text, flush=True)
    return table


def _failure_rejects(tally: Tally) -> list[dict]:
    return [{"where": r["id"], "stage": "inference", "reason": r["error"]} for r in tally.failed]


def _judge(
    todo,
    n_todo: int,
    judges: list[JudgeSpec],
    specs: dict,
    pool: PoolSettings,
    run: TaskRun,
) -> None:
    """Streams the ``todo`` pairs (a Ray dataset) through :class:`JudgeEvalWorker`, every
    engine resident."""
    t0 = time.monotonic()
    try:
        job = StreamJob(
            JudgeEvalWorker, {"judges": judges, "specs": specs}, SHARD_SCHEMA, run.run_dir
        )
        stream_dataset(todo, n_todo, job, pool)
    finally:
        run.timings["judging"] = time.monotonic() - t0
