"""The evaluation's questions, read storage to storage (``instructions.read_valid``).

Read tasks validate the questions and write their rejects; :class:`QuestionCheck`, run by Ray
tasks (``instructions.RowCheck``), then gives each batch what the worker needs (the baseline's
answers matched by question id, MT-Bench's category and reference answers), sets aside the
questions too long for a model's context, and writes those rejects as one part per batch. The baseline files' own
unusable records are written once, by :func:`read_lookups` (a Ray task before the read).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.input_stream import write_rejects_part
from moaa_cluster.evaluation.answers import attach_baseline, load_baseline
from moaa_cluster.evaluation.lengths import LengthCheck
from moaa_cluster.evaluation.settings import ProtocolSettings
from moaa_cluster.pipeline.eval_protocols import attach_mt_bench, mt_bench_lookup
from moaa_cluster.pipeline.eval_worker import INPUT_SCHEMA
from moaa_cluster.pipeline.instructions import RowCheck, block_totals, clear_rejects, read_valid
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import REJECTS_DIR

# reject parts sort by name (``runs.datasets.concat_rejects``): after the read tasks' input
# and duplicate parts come the questions set aside here, then the baseline files' records
QUESTIONS_PART = "3-questions"
BASELINE_PART = "4-baseline"


class QuestionCheck:
    """A read's row check: the questions of a batch with their baseline answers (and MT-Bench
    category and reference); those without one, or too long for a context, written as a
    reject part.

    Args:
        rejects_dir: Where the reject parts go.
        sources: The question sources (MT-Bench reads their categories).
        files: The baseline's answers files (None: a baseline model generates them).
        lengths: :class:`~moaa_cluster.evaluation.lengths.LengthCheck`'s arguments, by name.
    """

    def __init__(self, rejects_dir: str, sources: list, files: list[str] | None, lengths: dict):
        self.rejects_dir = rejects_dir
        self.sources = sources
        self.index = load_baseline(files)[0] if files is not None else None
        protocol = lengths["settings"].protocol
        self.references = protocol.references
        self.mt_bench = (
            mt_bench_lookup(sources, protocol.references) if protocol.name == "mt_bench" else None
        )
        self.lengths = LengthCheck(**lengths)  # tokenizers loaded once per read and worker

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        rejects: list[dict] = []
        if self.index is not None:
            rows, unmatched = attach_baseline(rows, self.index)
            rejects += unmatched
        else:
            rows = [{**r, "baseline": []} for r in rows]
        if self.mt_bench is not None:
            rows, no_reference = attach_mt_bench(rows, self.sources, self.references, self.mt_bench)
            rejects += no_reference
        rows, too_long = self.lengths.split(rows)
        rejects += too_long
        write_rejects_part(self.rejects_dir, _part_name(batch), rejects)
        return pa.Table.from_pylist(
            [{k: r.get(k) for k in INPUT_SCHEMA.names} for r in rows], schema=INPUT_SCHEMA
        )


def _part_name(batch: pa.Table) -> str:
    """A batch's reject part, named by its first row's read position: the parts of the
    batches sort in read order."""
    if "_unit" not in batch.column_names or batch.num_rows == 0:
        return f"{QUESTIONS_PART}-{uuid.uuid4().hex[:8]}"
    unit, rec = min(zip(batch["_unit"].to_pylist(), batch["_rec"].to_pylist(), strict=True))
    return f"{QUESTIONS_PART}-{unit:06d}-{rec:09d}"


def read_questions(
    sources: list, run_dir: Path | str, limit: int | None, files: list[str] | None, lengths: dict
):
    """The valid questions of ``sources`` for a run in ``run_dir`` (a materialized Ray
    dataset of :data:`INPUT_SCHEMA`; Ray must be up), their rejects written as parts of the
    run's ``rejects/``; ``files``: the baseline's answers (None: a baseline model);
    ``lengths``: :class:`QuestionCheck`'s."""
    import ray

    settings = lengths["settings"]
    clear_rejects(run_dir)
    rejects_dir = str(storage.join(run_dir, REJECTS_DIR))
    protocol = settings.protocol
    references = protocol.references if protocol.name == "mt_bench" else None
    try:
        ray.get(
            ray.remote(num_cpus=0)(read_lookups).remote(sources, files, references, rejects_dir)
        )
    except ray.exceptions.RayTaskError as exc:  # e.g. a missing file: its own error, as is
        raise exc.cause from None
    check = RowCheck(
        QuestionCheck,
        {"sources": sources, "files": files, "lengths": lengths},
        workers=settings.workers,
        cpus=settings.worker_cpus,
    )
    return read_valid(sources, run_dir, limit=limit, check=check, clear=False)


def read_lookups(
    sources: list, files: list[str] | None, references: str | None, rejects_dir: str
) -> int:
    """Reads what every :class:`QuestionCheck` reads, once, before the questions are
    read (a missing or malformed file fails the run with its own error): the baseline's
    answers ``files``, their unusable records written as a reject part, and MT-Bench's
    ``references`` with ``sources``' categories. Returns the baseline records rejected.
    Runs as a Ray task."""
    if references is not None:
        mt_bench_lookup(sources, references)
    if files is None:
        return 0
    rejects = load_baseline(files)[1]
    write_rejects_part(rejects_dir, f"{BASELINE_PART}-{uuid.uuid4().hex[:8]}", rejects)
    return len(rejects)


def planned_calls(todo, protocol: ProtocolSettings, per_pair: int) -> tuple[int, int]:
    """``(questions, model calls they plan)`` of the Ray dataset ``todo`` (per-block figures:
    the rows stay in the cluster); ``per_pair``: the judge's calls per pair of answers."""
    totals = block_totals(
        todo, _calls, {"rows": sum, "calls": sum}, protocol=protocol, per_pair=per_pair
    )
    return totals["rows"], totals["calls"]


def _calls(batch: pa.Table, protocol: ProtocolSettings, per_pair: int) -> pa.Table:
    rows = batch.select(["turns", "baseline"]).to_pylist()
    calls = sum(calls_per_question(protocol, per_pair, r) for r in rows)
    return pa.table({"rows": [batch.num_rows], "calls": [calls]})


def calls_per_question(ps: ProtocolSettings, per_pair: int, row: dict) -> int:
    """The model's turns, the baseline model's turns when it answers, the judge's calls."""
    turns = len(row["turns"])
    baseline = turns if ps.needs_baseline and not row.get("baseline") else 0
    return turns + baseline + ps.judge_calls(turns, per_pair)
