"""What an evaluation run writes besides its summary, from one Ray Data pass over its shards.

``answers/`` and ``answers.parquet`` (and ``baseline_answers/`` and
``baseline_answers.parquet`` for a baseline model; usable as a baseline file later),
``judgments/`` and ``judgments.parquet`` (one row per judged question), each sorted by source
and id. The pass keeps the shard rows of this run's questions (an ``is_in`` against their
ids); what comes back to the driver is each finished row's :func:`compact_row` (no answer
texts) and the failed rows (few), never the answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.evaluation.summary import answer_chars, compact_row
from moaa_cluster.judge.judge import COUNT_FIELDS
from moaa_cluster.pipeline.eval_worker import SHARD_SCHEMA
from moaa_cluster.pipeline.frame import MESSAGE
from moaa_cluster.pipeline.instructions import cached_ids
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import sorted_by_source_id, write_dataset
from moaa_cluster.runs.shards import finished_among, last_failures, shard_dataset, shard_dir

ANSWER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("model", pa.string()),
        ("turns", pa.list_(pa.string())),
        ("messages", pa.list_(MESSAGE)),
        ("prompt_tokens", pa.list_(pa.int64())),  # per turn, as the engine counted them
        ("completion_tokens", pa.list_(pa.int64())),
        ("finish_reasons", pa.list_(pa.string())),
    ]
)
JUDGMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("turns", pa.int32()),
        ("outcome", pa.string()),
        ("identical", pa.bool_()),
        ("verdict_model_first", pa.string()),
        ("verdict_baseline_first", pa.string()),
        ("model_chars", pa.int64()),
        ("baseline_chars", pa.int64()),
        ("judge", pa.string()),
        *[(f"judge_{f}", pa.int64()) for f in COUNT_FIELDS],
        ("protocol", pa.string()),  # null: pairwise (runs from before protocols existed)
        ("category", pa.string()),
        ("preference", pa.float64()),
        ("game_outcomes", pa.list_(pa.string())),
        ("grades", pa.list_(pa.float64())),
    ]
)


def failure_rejects(failed: list[dict]) -> list[dict]:
    """The ``rejects.jsonl`` records of the questions that failed in inference."""
    return [
        {
            "source": r["source"],
            "where": r["source_id"] or r["id"],
            "stage": "inference",
            "reason": r["error"],
            "record": {"turns": r["turns"]},
        }
        for r in failed
    ]


def side_rows(rows: list[dict], side: str, name: str) -> pa.Table:
    """One side's (``model`` or ``baseline``) answers as an ``answers.parquet`` table."""
    out = []
    for r in rows:
        answers = r[f"{side}_answers"]
        out.append(
            {
                "id": r["id"],
                "source": r["source"],
                "source_id": r["source_id"],
                "model": name,
                "turns": r["turns"],
                # a user turn with its answer, as far as both go
                "messages": chat_messages(r.get("system"), r["turns"][: len(answers)], answers),
                "prompt_tokens": r[f"{side}_prompt_tokens"],
                "completion_tokens": r[f"{side}_completion_tokens"],
                "finish_reasons": r[f"{side}_finish_reasons"],
            }
        )
    return pa.Table.from_pylist(out, schema=ANSWER_SCHEMA)


def judgment_rows(finished: list[dict]) -> list[dict]:
    """One ``judgments.parquet`` row per finished question."""
    return [
        {
            "id": r["id"],
            "source": r["source"],
            "source_id": r["source_id"],
            "turns": len(r["turns"]),
            "outcome": r["outcome"],
            "identical": r["identical"],
            "verdict_model_first": r["verdict_model_first"],
            "verdict_baseline_first": r["verdict_baseline_first"],
            "model_chars": answer_chars(r["model_answers"]),
            "baseline_chars": answer_chars(r["baseline_answers"]),
            "judge": r["judge"],
            **{f"judge_{f}": r[f"judge_{f}"] for f in COUNT_FIELDS},
            **{k: r.get(k) for k in ("protocol", "category", "preference", "game_outcomes")},
            "grades": r.get("grades"),
        }
        for r in finished
    ]


@dataclass
class EvalResults:
    """What the pass over the shards gives the driver: every finished row of this run's
    questions as its :func:`compact_row`, sorted by source and id, and the last failure of
    each question that never finished."""

    finished: list[dict]
    failed: list[dict]


_FAILED_FIELDS = ["id", "source", "source_id", "turns", "error", "finished_at", "retries"]


def _wanted(batch: pa.Table, wanted) -> pa.Table:
    return batch.filter(pc.is_in(batch["id"], value_set=cached_ids(wanted)))


def _finished(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["error"]))


def _block_results(batch: pa.Table) -> pa.Table:
    """Ray Data step: a block's finished rows as compact records and its failed rows (JSON)."""
    failed = batch.filter(pc.invert(pc.is_null(batch["error"])))
    return pa.table(
        {
            "finished": [json.dumps([compact_row(r) for r in _finished(batch).to_pylist()])],
            "failed": [json.dumps(failed.select(_FAILED_FIELDS).to_pylist())],
        }
    )


def _side_block(batch: pa.Table, side: str, name: str) -> pa.Table:
    return side_rows(batch.to_pylist(), side, name)


def _judgment_block(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist(judgment_rows(batch.to_pylist()), schema=JUDGMENT_SCHEMA)


def _results(rows) -> EvalResults:
    finished: list[dict] = []
    failed: list[dict] = []
    for part in rows.map_batches(
        _block_results, batch_format="pyarrow", batch_size=None
    ).take_all():
        finished += json.loads(part["finished"])
        failed += json.loads(part["failed"])
    finished.sort(key=lambda r: (r["source"], r["id"]))
    failed = last_failures(failed, finished_among(rows, {r["id"] for r in failed}))
    return EvalResults(finished, failed)


def write_outputs(
    run_dir: Path | str, wanted, model: str, baseline_model: str | None
) -> EvalResults:
    """Writes the answers and judgments of the shard rows of ``wanted`` (an object ref of
    the questions' ids; ``runs.datasets.write_dataset``, each with its single file);
    ``model``, ``baseline_model``: the names in the answers (None: no baseline model)."""
    files = storage.list_files(shard_dir(run_dir), ".parquet")
    rows = None
    if files:
        rows = shard_dataset(files, SHARD_SCHEMA).map_batches(
            _wanted, fn_kwargs={"wanted": wanted}, batch_format="pyarrow"
        )
        rows = rows.materialize()
    results = _results(rows) if rows is not None else EvalResults([], [])
    n = len(results.finished)
    done = rows.map_batches(_finished, batch_format="pyarrow") if n else None
    outputs = [("answers", _side_block, {"side": "model", "name": model}, ANSWER_SCHEMA)]
    if baseline_model is not None:
        kwargs = {"side": "baseline", "name": baseline_model}
        outputs.append(("baseline_answers", _side_block, kwargs, ANSWER_SCHEMA))
    outputs.append(("judgments", _judgment_block, {}, JUDGMENT_SCHEMA))
    for name, fn, kwargs, schema in outputs:
        ds = None
        if done is not None:
            ds = done.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow")
            ds = sorted_by_source_id(ds, n)
        path = storage.join(run_dir, name)
        write_dataset(ds, path, storage.join(run_dir, f"{name}.parquet"), schema)
    return results
