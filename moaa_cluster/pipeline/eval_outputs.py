"""What an evaluation run writes besides its shards and summary.

``answers.parquet`` (and ``baseline_answers.parquet`` for a baseline model; both usable as a
baseline file later), ``judgments.parquet`` (one row per judged question) and
``rejects.jsonl`` (questions rejected on input, unusable baseline records, questions that
failed in inference).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.evaluation.summary import answer_chars
from moaa_cluster.judge.judge import COUNT_FIELDS
from moaa_cluster.pipeline.frame import MESSAGE
from moaa_cluster.runs.files import write_parquet_atomic
from moaa_cluster.runs.storage import join
from moaa_cluster.runs.task_run import write_rejects

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


def write_answers_and_judgments(
    run_dir: Path | str, finished: list[dict], model: ModelSpec, baseline_model: ModelSpec | None
) -> None:
    """``answers.parquet``, ``baseline_answers.parquet`` (a baseline model's) and
    ``judgments.parquet`` of the finished questions."""
    write_parquet_atomic(side_rows(finished, "model", model.name), join(run_dir, "answers.parquet"))
    if baseline_model is not None:
        write_parquet_atomic(
            side_rows(finished, "baseline", baseline_model.name),
            join(run_dir, "baseline_answers.parquet"),
        )
    write_parquet_atomic(
        pa.Table.from_pylist(judgment_rows(finished), schema=JUDGMENT_SCHEMA),
        join(run_dir, "judgments.parquet"),
    )


def write_eval_rejects(run_dir: Path | str, rejects: list[dict], failed: list[dict]) -> Path | str:
    """``rejects.jsonl``: the input and baseline rejects, then the questions that failed."""
    return write_rejects(
        run_dir,
        rejects,
        [
            {
                "source": r["source"],
                "where": r["source_id"] or r["id"],
                "stage": "inference",
                "reason": r["error"],
                "record": {"turns": r["turns"]},
            }
            for r in failed
        ],
    )


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
