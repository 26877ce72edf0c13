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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from moaa_cluster.engines.placement import Capacity, first_fit_waves
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import CallContext, Mixture, Step, run_steps
from moaa_cluster.pipeline import layered_rows as rows_between
from moaa_cluster.pipeline.frame import (
    PoolSettings,
    RowWorker,
    StreamJob,
    rows_dataset,
    shard_schema,
    stream_dataset,
)
from moaa_cluster.runs import storage
from moaa_cluster.runs.options import RunOptions

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
        worker_extra: Further :class:`PassWorker` arguments (``backends``, ``fits``); empty:
            the workers build them from ``specs``.
    """

    mixture: Mixture
    specs: dict[str, ModelSpec]
    settings: Any
    input_schema: pa.Schema
    shard_schema: pa.Schema
    worker_extra: dict = field(default_factory=dict)  # more PassWorker kwargs (backends, fits)

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


def run_layered(rows, job: LayeredJob, passes: list[Pass], host, opts: RunOptions) -> int:
    """Runs ``passes`` over ``rows`` (a Ray dataset, or a list of row dicts); writes the
    finished rows to the run's shards.

    Storage to storage (:mod:`moaa_cluster.pipeline.layered_rows`): between passes the rows
    are a Ray dataset in the object store, each with its answers so far. A pass streams the
    rows that have its turn and have not finished it (its shards under
    ``<run_dir>/passes/<pass>`` say which) through its workers; its finished rows are joined
    back by ``id``, rows without its turn pass on, rows it failed drop out and are recorded with
    the pass's label. Ray Data tasks write the rows that finish every pass as the run's shards.

    Args:
        host: ``engines.host.EngineHost``; ``host.use(specs)`` makes a pass's engines resident.
        opts: The run's options: ``run_dir`` (passes write under ``<run_dir>/passes``) and
            ``progress``.

    Returns:
        Rows written (finished or failed).
    """
    if isinstance(rows, list):
        rows = rows_dataset(rows, job.input_schema)
    call_type = job.shard_schema.field("calls").type.value_type
    live = rows_between.start_rows(
        rows, job.input_schema, rows_between.carried_schema(job.input_schema, call_type)
    )
    failed: dict[str, str] = {}
    for i, p in enumerate(passes, start=1):
        live, lost = _run_pass(p, f"{i}/{len(passes)}", live, job, host, opts)
        for rid, error in lost.items():
            failed.setdefault(rid, f"{p.label}: {error}")
    written = rows_between.write_finished(live, opts.run_dir, job.mixture, job.shard_schema)
    if failed:
        written += rows_between.write_failed(rows, failed, job.shard_schema, opts.run_dir)
    return written


def _run_pass(p: Pass, num: str, live, job: LayeredJob, host, opts: RunOptions):
    """Pass ``p`` over the rows ``live``: returns the rows after it and the ids it failed."""
    import ray

    from moaa_cluster.pipeline.instructions import unfinished
    from moaa_cluster.runs.shards import finished_id_array

    call_type = job.shard_schema.field("calls").type.value_type
    pass_in, pass_out = _pass_schemas(call_type, job.input_schema)
    pass_dir = storage.join(opts.run_dir, "passes", p.name)
    taking, others = rows_between.split_by_turn(live, p.turn)
    n_taking = taking.count()
    finished = ray.remote(num_cpus=0)(finished_id_array).remote(str(pass_dir))
    todo = taking.map_batches(
        unfinished, fn_kwargs={"finished": finished}, batch_format="pyarrow"
    ).materialize()
    n_todo = todo.count()
    print(
        f"pass {num}: {p.label}: {n_todo} rows to run, {n_taking - n_todo} done before",
        flush=True,
    )
    if n_todo:
        host.use([job.specs[k] for k in p.models])
        kwargs = {
            "mixture": job.mixture,
            "specs": job.specs,
            "settings": job.settings,
            "step": p,
            "output_schema": pass_out,
            **job.worker_extra,
        }
        stream_dataset(
            todo.select_columns(pass_in.names),
            n_todo,
            StreamJob(PassWorker, kwargs, pass_out, pass_dir),
            job.pool(f"synth pass {num}", opts.progress, n_todo * len(p.seats)),
        )
    carried = rows_between.carried_schema(job.input_schema, call_type)
    after = rows_between.merge_pass(taking, others, pass_dir, pass_out, carried, n_taking)
    return after, rows_between.failed_in_pass(pass_dir)
