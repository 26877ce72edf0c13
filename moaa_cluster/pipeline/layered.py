"""Stage 1 layer by layer: when a mixture's engines cannot be resident together.

The placement planner decides: if every engine of the mixture fits on the cluster at once,
rows stream through the whole mixture (``pipeline.synth``). Otherwise the mixture runs in
*passes*: for each turn, each layer, one pass per *wave* of that layer's models that fit
together. Before a pass the engines it needs are started and the others stopped; every row
then gets that pass's answers, written as parquet shards under ``<run_dir>/passes/<pass>``.
The next pass reads them as its rows' state. A killed run resumes pass by pass (finished
passes start no engine) and row by row inside a pass. The finished rows land in the run's
own shards in the same schema as a resident run, so outputs are identical in shape.

Sampling seeds derive from the row and the answer's (turn, layer, seat), so a row gets the
same answers whichever way the run is split.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from moaa_cluster.engines.placement import Capacity, first_fit_waves
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import CallContext, Mixture, Step, conversation, run_steps
from moaa_cluster.pipeline.frame import PoolSettings, RowWorker, shard_schema, stream_rows
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import consolidate, write_shard

log = logging.getLogger(__name__)

EXECUTIONS = ("auto", "resident", "layered")


@dataclass(frozen=True)
class Pass:
    """One pass over the rows: the answers of ``seats`` of ``layer`` for ``turn``."""

    turn: int
    layer: int
    seats: tuple[int, ...]  # indices into mixture.layers[layer]
    models: tuple[str, ...]  # spec keys whose engines are resident meanwhile

    @property
    def name(self) -> str:
        """Directory name, stable across reruns of the same plan."""
        return f"t{self.turn}-l{self.layer}-s{'_'.join(map(str, self.seats))}"

    @property
    def label(self) -> str:
        return f"turn {self.turn + 1} layer {self.layer + 1} ({', '.join(self.models)})"


def layer_waves(mixture: Mixture, capacity: Capacity) -> list[list[tuple[str, ...]]]:
    """For each layer, its distinct models grouped into waves that fit together.

    The planner's wave function (``engines.placement.waves.first_fit_waves``), so the passes
    are the stages ``moaa plan`` prints: a layer's models all at once when they fit, else
    first-fit decreasing by size; a wave sharing an engine with the previous layer's last
    wave runs first, one sharing an engine with the next layer last. Seat order within a
    layer does not matter for the outputs: answers are kept by (turn, layer, seat).

    Args:
        capacity: Engine sizes and the fit check (``engines.host.preflight_capacity``).

    Raises:
        ConfigError: A single model does not fit alone.
    """
    out = []
    prev: tuple[str, ...] = ()
    for i, layer in enumerate(mixture.layers):
        models = list(dict.fromkeys(a.model for a in layer))
        nxt = [a.model for a in mixture.layers[i + 1]] if i + 1 < len(mixture.layers) else []
        waves = first_fit_waves(models, capacity, before=prev, after=list(dict.fromkeys(nxt)))
        out.append(waves)
        prev = waves[-1]
    return out


def plan_passes(
    mixture: Mixture, capacity: Capacity, execution: str, max_turns: int
) -> list[Pass] | None:
    """The passes a run makes, or None when all engines are resident together.

    Args:
        capacity: See :func:`layer_waves`.
        execution: ``auto`` (resident when everything fits, else layered), ``resident``
            (refuse when it does not fit) or ``layered`` (always pass by pass).
        max_turns: The most turns of any row.
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {list(EXECUTIONS)}, got {execution!r}")
    if execution != "layered":
        try:
            capacity.fits(mixture.models)
            return None
        except ConfigError as exc:
            if execution == "resident":
                raise
            log.info("the mixture's engines do not fit together (%s): running layer by layer", exc)
    waves = layer_waves(mixture, capacity)
    passes = []
    for turn in range(max_turns):
        for layer_idx, layer in enumerate(mixture.layers):
            for wave in waves[layer_idx]:
                seats = tuple(i for i, a in enumerate(layer) if a.model in wave)
                passes.append(Pass(turn, layer_idx, seats, wave))
    return passes


def _pass_schemas(call_type: pa.DataType, input_schema: pa.Schema) -> tuple[pa.Schema, pa.Schema]:
    pass_in = pa.schema([*input_schema, ("state", pa.string())])
    pass_out = shard_schema(
        [
            ("id", pa.string()),
            ("state", pa.string()),  # JSON: this pass's answer columns
            ("calls", pa.list_(call_type)),
        ]
    )
    return pass_in, pass_out


class PassWorker(RowWorker):
    """Ray Data actor: one pass's seats on each row of a batch, rows concurrently."""

    def __init__(
        self,
        mixture,
        specs,
        settings,
        step: Pass,
        output_schema: pa.Schema,
        backends=None,
        fits: dict | None = None,
    ):
        """``backends`` and ``fits`` (context fitters) default to ones built from ``specs``."""
        from moaa_cluster.engines.backends import make_backend
        from moaa_cluster.moa.fitters import load_fitters

        self.mixture = mixture
        self.settings = settings
        self.step = step
        self.schema = output_schema
        self.attempts = settings.attempts
        self.backends = backends or {
            k: make_backend(specs[k], settings.request_timeout_s) for k in step.models
        }
        # the pass's models' tokenizers fit each prompt into its context, as in a resident run
        self.fits = (
            fits
            if fits is not None
            else load_fitters({k: specs[k] for k in step.models if k in specs})
        )

    def start(self, row: dict) -> dict:
        return {"id": row["id"], "state": "{}", "calls": []}

    async def fill(self, row: dict, out: dict) -> None:
        p, s = self.step, self.settings
        state = {**{k: v for k, v in row.items() if k != "state"}, **json.loads(row["state"])}
        steps = [Step(p.turn, p.layer, i, self.mixture.layers[p.layer][i]) for i in p.seats]
        results = await run_steps(
            self.mixture,
            steps,
            state,
            CallContext(self.backends, s.defaults, s.seed, s.record_prompts, self.fits),
        )
        out["state"] = json.dumps(
            {st.column: text for st, (text, _) in zip(steps, results, strict=True)}
        )
        out["calls"] = [rec for _, rec in results]


@dataclass(frozen=True)
class LayeredJob:
    """What every pass of a layer-by-layer run works with.

    Attributes:
        mixture: The mixture.
        specs: Its model specs by key.
        settings: The run's ``SynthSettings`` (sampling, seed, worker pool).
        input_schema: The resident path's row schema (``pipeline.synth``).
        shard_schema: The resident path's shard schema, so both paths write the same shards.
    """

    mixture: Mixture
    specs: dict[str, ModelSpec]
    settings: Any
    input_schema: pa.Schema
    shard_schema: pa.Schema

    def pool(self, desc: str, progress: bool, calls: int | None = None) -> PoolSettings:
        """The Ray Data worker pool of one pass, as the settings size it."""
        s = self.settings
        return PoolSettings(
            batch_size=s.batch_size,
            workers=s.workers,
            worker_cpus=s.worker_cpus,
            desc=desc,
            progress=progress,
            rows_per_block=s.rows_per_block,
            calls=calls,
        )


class _Answers:
    """Each row's answers, calls and retries gathered pass by pass, and why a row failed.

    Answers are kept by answer column and calls sorted by (turn, layer, seat), so the order
    of the passes within a layer does not change a row's output.
    """

    def __init__(self, rows: list[dict]):
        self.states: dict[str, dict] = {r["id"]: {} for r in rows}
        self.calls: dict[str, list] = {r["id"]: [] for r in rows}
        self.retries: dict[str, int] = {r["id"]: 0 for r in rows}
        self.failed: dict[str, str] = {}

    def pass_rows(self, rows: list[dict], job: LayeredJob) -> list[dict]:
        """``rows`` as a pass reads them: the input columns and the answers so far (JSON)."""
        return [
            {**{n: r[n] for n in job.input_schema.names}, "state": json.dumps(self.states[r["id"]])}
            for r in rows
        ]

    def add(self, ok: list[dict], bad: list[dict], wanted: set[str], label: str) -> None:
        """Merges one pass's finished (``ok``) and failed (``bad``) rows of ``wanted``."""
        for r in ok:
            if r["id"] in wanted:
                self.states[r["id"]].update(json.loads(r["state"]))
                self.calls[r["id"]].extend(r["calls"])
                self.retries[r["id"]] += r["retries"] or 0
        for r in bad:
            if r["id"] in wanted:
                self.failed[r["id"]] = f"{label}: {r['error']}"

    def rows(self, rows: list[dict], job: LayeredJob) -> list[dict]:
        """The finished rows in the resident path's shard schema."""
        out = []
        for r in rows:
            rid = r["id"]
            error = self.failed.get(rid)
            out.append(
                {
                    **{n: r[n] for n in job.input_schema.names},
                    "messages": []
                    if error
                    else conversation(job.mixture, {**r, **self.states[rid]}),
                    "calls": sorted(
                        self.calls[rid], key=lambda c: (c["turn"], c["layer"], c["seat"])
                    ),
                    "error": error,
                    "finished_at": time.time(),
                    "retries": self.retries[rid],
                }
            )
        return out


def run_layered(
    rows: list[dict], job: LayeredJob, passes: list[Pass], host, opts: RunOptions
) -> int:
    """Runs ``passes`` over ``rows``; writes the finished rows to the run's shards.

    Args:
        host: ``engines.host.EngineHost``; ``host.use(specs)`` makes a pass's engines resident.
        opts: The run's options: ``run_dir`` (passes write under ``<run_dir>/passes``) and
            ``progress``.

    Returns:
        Rows written (finished or failed).
    """
    call_type = job.shard_schema.field("calls").type.value_type
    pass_in, pass_out = _pass_schemas(call_type, job.input_schema)
    answers = _Answers(rows)
    for i, p in enumerate(passes, start=1):
        pass_dir = Path(opts.run_dir) / "passes" / p.name
        todo = [r for r in rows if r["id"] not in answers.failed and p.turn < len(r["turns"])]
        ok, bad = consolidate(pass_dir)
        done_before = {r["id"] for r in ok}
        remaining = [r for r in todo if r["id"] not in done_before]
        print(
            f"pass {i}/{len(passes)}: {p.label}: {len(remaining)} rows to run, "
            f"{len(todo) - len(remaining)} done before",
            flush=True,
        )
        if remaining:
            host.use([job.specs[k] for k in p.models])
            stream_rows(
                answers.pass_rows(remaining, job),
                pass_in,
                PassWorker,
                {
                    "mixture": job.mixture,
                    "specs": job.specs,
                    "settings": job.settings,
                    "step": p,
                    "output_schema": pass_out,
                },
                pass_out,
                pass_dir,
                job.pool(
                    f"synth pass {i}/{len(passes)}", opts.progress, len(remaining) * len(p.seats)
                ),
            )
            ok, bad = consolidate(pass_dir)
        answers.add(ok, bad, {r["id"] for r in todo}, p.label)
    out = answers.rows(rows, job)
    if out:
        write_shard(opts.run_dir, pa.Table.from_pylist(out, schema=job.shard_schema))
    return len(out)
