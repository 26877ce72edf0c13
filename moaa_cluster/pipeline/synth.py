"""Stage 1: MoA synthesis of SFT data on Ray Data, with engines hosted by Ray Serve LLM.

Data flow, storage to storage (:mod:`moaa_cluster.pipeline.instructions`): Ray Data read
tasks read and validate the sources (writing their rejects), duplicates and rows an earlier run
of the same directory finished are dropped, and the rest stream through a Ray Data actor pool
whose workers run the whole mixture per row (each row's aggregator starts as soon as its own
proposers finish, turn after turn) and write finished blocks as atomic parquet shards, so a
killed run resumes without redoing or duplicating rows. When the engines do not fit together
the same calls run pass by pass (:mod:`moaa_cluster.pipeline.layered`). At the end Ray Data
writes the shards as ``sft/`` (and ``sft.parquet``), in TRL's conversational format with
provenance, and ``rejects.jsonl``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from moaa_cluster.engines.describe import model_record
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.moa.lengths import length_rejects
from moaa_cluster.moa.mixture import Mixture, conversation, run_row
from moaa_cluster.pipeline.frame import (
    PoolSettings,
    RowWorker,
    StreamJob,
    rows_dataset,
    stream_dataset,
)
from moaa_cluster.pipeline.instructions import Instructions, RowCheck, open_instructions
from moaa_cluster.pipeline.layered import LayeredJob, plan_passes, run_layered
from moaa_cluster.pipeline.synth_outputs import (
    SHARD_SCHEMA,
    check_truncated_policy,
    summary_lines,
    write_outputs,
)
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.task_run import TaskRun

log = logging.getLogger(__name__)

INPUT_SCHEMA = pa.schema(
    [
        (f.name, f.type)
        for f in SHARD_SCHEMA
        if f.name in ("id", "source", "source_id", "system", "turns")
    ]
)


@dataclass
class SynthSettings:
    """Knobs of one synthesis run (from ``conf/synth.yaml``)."""

    defaults: dict = field(default_factory=dict)  # sampling defaults for every seat
    seed: int | None = 0
    batch_size: int = 8  # rows a worker runs concurrently
    workers: int = 2  # Ray Data actors running rows
    worker_cpus: float = 0.25
    request_timeout_s: float | None = 600.0
    record_prompts: bool = False
    attempts: int = 4  # per row, on transient engine errors (a restarting engine)
    # auto: all engines at once when the planner says they fit, else layer by layer
    # (pipeline.layered); resident: refuse when they do not fit; layered: always pass by pass
    execution: str = "auto"
    rows_per_block: int | None = None  # None: frame.BLOCK_ROWS (benchmarks vary it)
    # rows whose final answer stopped at max_tokens: exclude (from sft.parquet) | keep
    truncated: str = "exclude"
    # also write sft.parquet, one file (sft/, the parquet dataset, is written at any size)
    single_file: bool = True


class MixtureWorker(RowWorker):
    """Ray Data actor: runs the full mixture on each row of a batch, rows concurrently."""

    schema = SHARD_SCHEMA

    def __init__(self, mixture: Mixture, specs: dict, settings: SynthSettings):
        from moaa_cluster.engines.backends import make_backend
        from moaa_cluster.moa.fitters import load_fitters

        self.mixture = mixture
        self.settings = settings
        self.attempts = settings.attempts
        self.backends = {
            name: make_backend(spec, settings.request_timeout_s) for name, spec in specs.items()
        }
        # each model's tokenizer, to fit every prompt into its context at run time
        self.fits = load_fitters(specs)

    def start(self, row: dict) -> dict:
        return {**row, "messages": [], "calls": []}

    async def fill(self, row: dict, out: dict) -> None:
        s = self.settings
        answers, calls = await run_row(
            self.mixture,
            row,
            self.backends,
            defaults=s.defaults,
            seed=s.seed,
            record_prompts=s.record_prompts,
            fits=self.fits,
        )
        out["messages"] = conversation(self.mixture, {**row, **answers})
        out["calls"] = calls


class LengthCheck:
    """A read's row check: drops rows whose own text cannot fit the mixture's prompts
    (:func:`moaa_cluster.moa.lengths.length_rejects`), writing their rejects as a part."""

    def __init__(self, rejects_dir: str, mixture: Mixture, specs: dict, defaults: dict):
        from moaa_cluster.moa.fitters import load_fitters

        self.rejects_dir = rejects_dir
        self.args = (
            mixture,
            specs,
            defaults,
            load_fitters(specs),
        )  # tokenizers once per read and worker

    def __call__(self, batch: pa.Table) -> pa.Table:
        import uuid

        from moaa_cluster.data.input_stream import write_rejects_part

        rows, rejects = length_rejects(batch.to_pylist(), *self.args)
        write_rejects_part(self.rejects_dir, f"3-length-{uuid.uuid4().hex[:8]}", rejects)
        return pa.Table.from_pylist(rows, schema=batch.schema)


def run_rows(
    rows,
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    run_dir: Path | str,
    progress: bool = True,
    counts: tuple[int, int] | None = None,
) -> int:
    """Streams ``rows`` through the mixture on Ray Data; returns rows written.

    ``rows``: a list of row dicts, or a ``ray.data.Dataset`` with ``counts`` = (its rows,
    its turns in all).
    """
    if isinstance(rows, list):
        counts = (len(rows), sum(len(r["turns"]) for r in rows))
        rows = rows_dataset(rows, INPUT_SCHEMA) if rows else None
    n_rows, turns = counts
    job = StreamJob(
        MixtureWorker,
        {"mixture": mixture, "specs": specs, "settings": settings},
        SHARD_SCHEMA,
        run_dir,
    )
    pool = PoolSettings(
        batch_size=settings.batch_size,
        workers=settings.workers,
        worker_cpus=settings.worker_cpus,
        desc="synth",
        progress=progress,
        rows_per_block=settings.rows_per_block,
        # every seat of every layer answers every turn
        calls=turns * sum(map(len, mixture.layers)),
    )
    return stream_dataset(rows, n_rows, job, pool) if n_rows else 0


def synthesize(
    sources: list,
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    opts: RunOptions,
) -> dict:
    """Runs stage 1 end to end into ``opts.run_dir``; returns the manifest it writes."""
    from moaa_cluster.engines import host as engine_host

    run = TaskRun.open(opts, specs.values())
    check_truncated_policy(settings.truncated)
    # the planner refuses a mixture that cannot run before Ray or any engine starts
    capacity = engine_host.preflight_capacity(opts.cluster, specs)
    resident = plan_passes(mixture, capacity, settings.execution, 1) is None
    with engine_host.hosting(
        opts.cluster, keep=opts.keep_engines, timings=run.timings, report=run.ray
    ) as host:
        found = open_instructions(
            sources,
            run.run_dir,
            limit=opts.limit,
            check=RowCheck(
                LengthCheck,
                {"mixture": mixture, "specs": specs, "defaults": settings.defaults},
                workers=settings.workers,
                cpus=settings.worker_cpus,
            ),
        )
        run.timings.update(found.timings)
        log.info(
            "%d rows valid, %d already done, %d to run",
            found.valid,
            found.valid - found.todo_rows,
            found.todo_rows,
        )
        passes = None if resident else plan_passes(mixture, capacity, "layered", found.max_turns)
        _generate(found, mixture, specs, settings, run, host, passes)
        t0 = time.monotonic()
        counts = write_outputs(run.run_dir, mixture, settings.truncated, settings.single_file)
        run.timings["write"] = time.monotonic() - t0
    counts.update(
        {
            "rows_in": found.valid + counts["rejects_input"],
            "rows_resumed": found.valid - found.todo_rows,
        }
    )
    manifest = run.save_manifest(
        "synth",
        counts,
        {k: model_record(s) for k, s in specs.items()},
        {
            "mixture": mixture_record(mixture, settings.defaults),
            "execution": "resident" if passes is None else [p.label for p in passes],
        },
    )
    for line in summary_lines(counts, run.timings, run.run_dir, settings.single_file):
        print(line, flush=True)
    return manifest


def _generate(
    found: Instructions,
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    run: TaskRun,
    host,
    passes: list | None,
) -> None:
    """Runs the rows left to do into the run's shards, every engine resident (``passes``
    None) or pass by pass."""
    if not found.todo_rows:
        return
    opts = run.opts
    if passes is None:
        host.use(list(specs.values()))
        t0 = time.monotonic()
        try:
            run_rows(
                found.todo,
                mixture,
                specs,
                settings,
                run.run_dir,
                progress=opts.progress,
                counts=(found.todo_rows, found.turns),
            )
        finally:
            run.timings["generation"] = time.monotonic() - t0
        return
    t0 = time.monotonic()
    try:
        job = LayeredJob(mixture, specs, settings, INPUT_SCHEMA, SHARD_SCHEMA)
        run_layered(found.todo, job, passes, host, opts)
    finally:
        # engine start-up is summed over the passes' swaps
        run.timings["generation"] = time.monotonic() - t0 - run.timings.get("engine_start", 0)


def mixture_record(mixture: Mixture, defaults: dict) -> dict:
    """The mixture as the manifest records it: seats per layer, sampling defaults."""
    return {
        "layers": [
            [
                {"model": a.model, "sampling": a.sampling, **({"solo": True} if a.solo else {})}
                for a in layer
            ]
            for layer in mixture.layers
        ],
        "defaults": defaults,
    }
