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
from moaa_cluster.moa.mixture import Mixture, conversation, run_row
from moaa_cluster.pipeline.frame import MESSAGE, RowWorker, shard_schema, stream_rows
from moaa_cluster.pipeline.layered import plan_passes, planner_fits, run_layered
from moaa_cluster.runs.files import write_parquet_atomic
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.shards import consolidate, finished_ids, open_run

log = logging.getLogger(__name__)

CALL = pa.struct(
    [
        ("turn", pa.int32()),
        ("layer", pa.int32()),
        ("seat", pa.int32()),
        ("model", pa.string()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("seconds", pa.float64()),
        ("prompt", pa.string()),
        # JSON of the carried answers cut to fit the context (moa.budget.Fitted.record), or
        # null when nothing was cut; shards written before the field existed read as null
        ("context", pa.string()),
        ("system_folded", pa.bool_()),  # system text folded into the first user turn
    ]
)
SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("system", pa.string()),
        ("turns", pa.list_(pa.string())),
        ("messages", pa.list_(MESSAGE)),
        ("calls", pa.list_(CALL)),
    ]
)
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
    rows_per_block: int | None = None  # None: stage.BLOCK_ROWS (benchmarks vary it)


class MixtureWorker(RowWorker):
    """Ray Data actor: runs the full mixture on each row of a batch, rows concurrently."""

    schema = SHARD_SCHEMA

    def __init__(self, mixture: Mixture, specs: dict, settings: SynthSettings):
        from moaa_cluster.engines.backends import make_backend
        from moaa_cluster.moa.budget import load_fitters

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
        batch_size=settings.batch_size,
        workers=settings.workers,
        worker_cpus=settings.worker_cpus,
        desc="synth rows",
        progress=progress,
        rows_per_block=settings.rows_per_block,
    )


def write_outputs(run_dir: Path, mixture: Mixture, input_rejects: list[dict]) -> dict:
    """Consolidates shards into ``sft.parquet`` and ``rejects.jsonl``; returns counts."""
    from moaa_cluster.runs.files import append_jsonl

    ok, failed = consolidate(run_dir)
    ok.sort(key=lambda r: (r["source"], r["id"]))
    table = pa.Table.from_pylist(
        [
            {
                "id": r["id"],
                "source": r["source"],
                "source_id": r["source_id"],
                "messages": r["messages"],
                "calls": r["calls"],
            }
            for r in ok
        ],
        schema=pa.schema(
            [
                (n, SHARD_SCHEMA.field(n).type)
                for n in ("id", "source", "source_id", "messages", "calls")
            ]
        ),
    )
    write_parquet_atomic(table, Path(run_dir) / "sft.parquet")
    rejects_path = Path(run_dir) / "rejects.jsonl"
    rejects_path.unlink(missing_ok=True)
    append_jsonl(rejects_path, input_rejects)
    append_jsonl(
        rejects_path,
        [
            {
                "source": r["source"],
                "where": r["id"],
                "stage": "inference",
                "reason": r["error"],
                "record": {"turns": r["turns"], "system": r["system"]},
            }
            for r in failed
        ],
    )
    tokens: dict[str, dict[str, int]] = {}
    for r in ok:
        for c in r["calls"]:
            t = tokens.setdefault(
                c["model"], {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            t["calls"] += 1
            t["prompt_tokens"] += c["prompt_tokens"]
            t["completion_tokens"] += c["completion_tokens"]
    finish = {}
    for r in ok:
        for c in r["calls"]:
            finish[c["finish_reason"]] = finish.get(c["finish_reason"], 0) + 1
    # calls whose carried answers were shortened to fit (shards from before have no `context`)
    cut = [sum(1 for c in r["calls"] if c.get("context")) for r in ok]
    return {
        "rows_ok": len(ok),
        "rows_failed": len(failed),
        "rejects_input": len(input_rejects),
        "multi_turn_rows": sum(1 for r in ok if len(r["turns"]) > 1),
        # shards written before the column existed have no `retries`
        "rows_retried": sum(1 for r in ok + failed if r.get("retries")),
        "tokens_per_model": tokens,
        "finish_reasons": finish,
        "calls_with_cut_context": sum(cut),
        "rows_with_cut_context": sum(1 for n in cut if n),
        "rows_failed_context": sum(1 for r in failed if r["error"].startswith("ContextOverflow")),
    }


def summary_lines(counts: dict, timings: dict, run_dir: Path) -> list[str]:
    lines = [
        f"rows: {counts['rows_ok']} ok ({counts['multi_turn_rows']} multi-turn), "
        f"{counts['rows_failed']} failed in inference, {counts['rejects_input']} rejected on input",
    ]
    for model, t in counts["tokens_per_model"].items():
        lines.append(
            f"  {model}: {t['calls']} calls, {t['prompt_tokens']} prompt + "
            f"{t['completion_tokens']} generated tokens"
        )
    if counts.get("calls_with_cut_context"):
        lines.append(
            f"context: {counts['calls_with_cut_context']} calls in "
            f"{counts['rows_with_cut_context']} rows had carried answers shortened to fit "
            "max_model_len (what was cut: calls.context in sft.parquet)"
        )
    if counts.get("rows_retried"):
        lines.append(
            f"retried: {counts['rows_retried']} rows hit a transient engine error (an engine "
            "restarting) and were run again"
        )
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    lines.append(f"output: {Path(run_dir) / 'sft.parquet'}  (rejects: rejects.jsonl)")
    if counts["rows_failed"]:
        lines.append(
            f"WARNING: {counts['rows_failed']} rows failed in inference (reasons in rejects.jsonl); "
            "rerun the same command to retry only those rows"
        )
    if counts.get("rows_failed_context"):
        lines.append(
            f"  {counts['rows_failed_context']} of them cannot fit a model's max_model_len even "
            "with every carried answer cut (ContextOverflow): a rerun fails them again"
        )
    return lines


def length_rejects(
    rows: list[dict], mixture: Mixture, specs: dict[str, ModelSpec], defaults: dict
) -> tuple[list[dict], list[dict]]:
    """Splits off rows whose own text cannot fit a model's context, whatever the answers.

    A row is rejected only when, for some call of some turn, the prompt with every carried
    answer (earlier final answers, the previous layer's proposals) cut to the truncation
    marker alone, plus the seat's ``max_tokens``, exceeds the model's ``max_model_len``
    (``ContextFitter.floor_check``). Longer answers are shortened at run time instead
    (``moaa_cluster.moa.budget``). Models without a local tokenizer are not checked.
    """
    from moaa_cluster.moa.budget import load_fitters

    fitters = load_fitters(specs)
    if not fitters:
        return rows, []
    keep, rejects = [], []
    for row in rows:
        try:
            reason = _floor_reason(row, mixture, specs, fitters, defaults)
        except Exception as exc:  # a record can fail only itself, never the run
            reason = f"length check failed: {type(exc).__name__}: {exc}"
        if reason is None:
            keep.append(row)
            continue
        rejects.append(
            {
                "source": row["source"],
                "where": row["id"],
                "stage": "input",
                "reason": reason,
                "record": {"turns": row["turns"], "system": row["system"]},
            }
        )
    return keep, rejects


def _floor_reason(
    row: dict, mixture: Mixture, specs: dict[str, ModelSpec], fitters: dict, defaults: dict
) -> str | None:
    """Why ``row`` cannot fit (the first call that cannot), or None when every call can."""
    from moaa_cluster.moa.budget import reserved_tokens
    from moaa_cluster.moa.mixture import Step, plan_steps, step_parts

    # the floor replaces every answer with the marker: placeholders stand in for them
    placeholder = {**row, **{s.column: "" for s in plan_steps(mixture, len(row["turns"]))}}
    for t in range(len(row["turns"])):
        for layer_idx, layer in enumerate(mixture.layers):
            for key in dict.fromkeys(a.model for a in layer):
                fitter = fitters.get(key)
                if fitter is None:
                    continue
                # a model's seats in one layer get the same prompt: the largest answer decides
                seats = [(i, a) for i, a in enumerate(layer) if a.model == key]
                reserve = max(
                    reserved_tokens({**defaults, **a.sampling}.get("max_tokens")) for _, a in seats
                )
                base, proposals = step_parts(mixture, Step(t, layer_idx, *seats[0]), placeholder)
                n = fitter.floor_check(base, None if proposals is None else len(proposals), reserve)
                if n is not None:
                    spec = specs[key]
                    return (
                        f"prompt too long for {spec.name} (max_model_len {spec.max_model_len}): "
                        f"turn {t + 1}, layer {layer_idx + 1} needs {n} prompt tokens with every "
                        f"earlier answer cut to the truncation marker, + {reserve} to generate "
                        f"= {n + reserve}"
                    )
    return None


def synthesize(
    sources: list,
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings: SynthSettings,
    run_dir: Path,
    cluster: dict,
    *,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    keep_engines: bool = False,
    manifest_extra: dict | None = None,
) -> dict:
    """Runs stage 1 end to end into ``run_dir``; returns the manifest it writes."""
    from moaa_cluster import runtime
    from moaa_cluster.data.sources import load_rows

    t_start = time.monotonic()
    run_dir = open_run(run_dir, specs.values(), overwrite=overwrite)
    rows, rejects = load_rows(sources, limit)
    rows, too_long = length_rejects(rows, mixture, specs, settings.defaults)
    rejects += too_long
    done = finished_ids(run_dir)
    todo = [r for r in rows if r["id"] not in done]
    log.info(
        "%d rows valid, %d rejected on input, %d already done, %d to run",
        len(rows),
        len(rejects),
        len(rows) - len(todo),
        len(todo),
    )
    timings: dict[str, float] = {"read": time.monotonic() - t_start}
    ray_report: dict = {}  # Ray session, engines released, placement groups left

    passes = None
    if todo:
        # the planner decides before Ray or any engine starts: resident, layered, or refused
        passes = plan_passes(
            mixture,
            planner_fits(specs, cluster),
            settings.execution,
            max(len(r["turns"]) for r in todo),
        )
    if todo and passes is None:  # (plan_passes ran the pre-flight check on all engines)
        with runtime.hosting(
            cluster, keep=keep_engines, timings=timings, report=ray_report
        ) as host:
            host.use(list(specs.values()))
            t0 = time.monotonic()
            try:
                run_rows(todo, mixture, specs, settings, run_dir, progress=progress)
            finally:
                timings["generation"] = time.monotonic() - t0
    elif todo:
        with runtime.hosting(
            cluster, keep=keep_engines, timings=timings, report=ray_report
        ) as host:
            t0 = time.monotonic()
            try:
                run_layered(
                    todo,
                    mixture,
                    specs,
                    settings,
                    run_dir,
                    passes,
                    host,
                    input_schema=INPUT_SCHEMA,
                    shard_schema=SHARD_SCHEMA,
                    progress=progress,
                )
            finally:
                # engine start-up is summed over the passes' swaps
                timings["generation"] = time.monotonic() - t0 - timings.get("engine_start", 0)
    counts = write_outputs(run_dir, mixture, rejects)
    counts.update({"rows_in": len(rows) + len(rejects), "rows_resumed": len(rows) - len(todo)})
    timings["total"] = time.monotonic() - t_start
    manifest = Manifest(
        task="synth",
        counts=counts,
        timings_s=timings,
        models={k: model_record(s) for k, s in specs.items()},
        details={
            "mixture": {
                "layers": [
                    [
                        {
                            "model": a.model,
                            "sampling": a.sampling,
                            **({"solo": True} if a.solo else {}),
                        }
                        for a in layer
                    ]
                    for layer in mixture.layers
                ],
                "defaults": settings.defaults,
            },
            "execution": "resident" if passes is None else [p.label for p in passes],
            "ray": ray_report or None,
            **(manifest_extra or {}),
        },
    ).save(run_dir)
    for line in summary_lines(counts, timings, run_dir):
        print(line, flush=True)
    return manifest
