"""Stage 1: MoA synthesis of SFT data on Ray Data, with engines hosted by Ray Serve LLM.

Data flow: rows are read and validated on the driver (rejects recorded), rows already
finished in an earlier run of the same run directory are skipped, the rest stream through a
Ray Data actor pool whose workers run the whole mixture per row (each row's aggregator starts
as soon as its own proposers finish, turn after turn). Finished blocks come back to the driver
and are written as atomic parquet shards, so a killed run resumes without redoing or
duplicating rows. At the end the shards are consolidated into ``sft.parquet`` (TRL
conversational format + provenance) and ``rejects.jsonl``.
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
from moaa_cluster.pipeline.frame import PoolSettings, RowWorker, stream_rows
from moaa_cluster.pipeline.layered import LayeredJob, plan_passes, run_layered
from moaa_cluster.pipeline.synth_outputs import SHARD_SCHEMA, summary_lines, write_outputs
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


def run_rows(
    rows: list[dict],
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    run_dir: Path,
    progress: bool = True,
) -> int:
    """Streams ``rows`` through the mixture on Ray Data; returns rows written."""
    return stream_rows(
        rows,
        INPUT_SCHEMA,
        MixtureWorker,
        {"mixture": mixture, "specs": specs, "settings": settings},
        SHARD_SCHEMA,
        run_dir,
        PoolSettings(
            batch_size=settings.batch_size,
            workers=settings.workers,
            worker_cpus=settings.worker_cpus,
            desc="synth",
            progress=progress,
            rows_per_block=settings.rows_per_block,
            # every seat of every layer answers every turn
            calls=sum(len(r["turns"]) for r in rows) * sum(map(len, mixture.layers)),
        ),
    )


def synthesize(
    sources: list,
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    opts: RunOptions,
) -> dict:
    """Runs stage 1 end to end into ``opts.run_dir``; returns the manifest it writes."""
    from moaa_cluster.data.sources import load_rows

    run = TaskRun.open(opts, specs.values())
    rows, rejects = load_rows(sources, opts.limit)
    rows, too_long = length_rejects(rows, mixture, specs, settings.defaults)
    rejects += too_long
    todo = run.todo(rows)
    log.info(
        "%d rows valid, %d rejected on input, %d already done, %d to run",
        len(rows),
        len(rejects),
        len(rows) - len(todo),
        len(todo),
    )
    run.timings["read"] = run.elapsed()
    passes = _generate(todo, mixture, specs, settings, run)
    counts = write_outputs(run.run_dir, mixture, rejects, settings.truncated)
    counts.update({"rows_in": len(rows) + len(rejects), "rows_resumed": len(rows) - len(todo)})
    manifest = run.save_manifest(
        "synth",
        counts,
        {k: model_record(s) for k, s in specs.items()},
        {
            "mixture": mixture_record(mixture, settings.defaults),
            "execution": "resident" if passes is None else [p.label for p in passes],
        },
    )
    for line in summary_lines(counts, run.timings, run.run_dir):
        print(line, flush=True)
    return manifest


def _generate(
    todo: list[dict],
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    run: TaskRun,
) -> list | None:
    """Runs the ``todo`` rows into the run's shards, with every engine resident or layer by
    layer as the planner decides; returns the passes (None: resident, or nothing to do)."""
    from moaa_cluster.engines import host as engine_host

    if not todo:
        return None
    # the planner decides before Ray or any engine starts: resident, layered, or refused
    passes = plan_passes(
        mixture,
        engine_host.preflight_capacity(run.opts.cluster, specs),
        settings.execution,
        max(len(r["turns"]) for r in todo),
    )
    opts = run.opts
    with engine_host.hosting(
        opts.cluster, keep=opts.keep_engines, timings=run.timings, report=run.ray
    ) as host:
        if passes is None:  # (plan_passes ran the pre-flight check on all engines)
            host.use(list(specs.values()))
            t0 = time.monotonic()
            try:
                run_rows(todo, mixture, specs, settings, run.run_dir, progress=opts.progress)
            finally:
                run.timings["generation"] = time.monotonic() - t0
            return None
        t0 = time.monotonic()
        try:
            job = LayeredJob(mixture, specs, settings, INPUT_SCHEMA, SHARD_SCHEMA)
            run_layered(todo, job, passes, host, opts)
        finally:
            # engine start-up is summed over the passes' swaps
            run.timings["generation"] = time.monotonic() - t0 - run.timings.get("engine_start", 0)
    return passes


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
