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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from moaa_cluster.engines.placement import Capacity, first_fit_waves
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import CallContext, Mixture, Step, conversation, run_steps
from moaa_cluster.pipeline.frame import (
    PoolSettings,
    RowWorker,
    StreamJob,
    rows_dataset,
    shard_schema,
    stream_dataset,
)
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import shard_dir, write_shard

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


# what a row carries from pass to pass besides its input columns
CARRIED = ("state", "calls", "retries_sum")


def _carried_schema(job: LayeredJob, call_type: pa.DataType) -> pa.Schema:
    """A row between passes: its input columns, its answers so far (``state``, JSON), its
    calls so far and the transient errors it survived."""
    return pa.schema(
        [
            *job.input_schema,
            ("state", pa.string()),
            ("calls", pa.list_(call_type)),
            ("retries_sum", pa.int32()),
        ]
    )


def _start_carry(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows as the first pass reads them: no answer, no call yet."""
    n = batch.num_rows
    cols = {f.name: batch[f.name] for f in schema if f.name not in CARRIED}
    cols.update(
        state=pa.array(["{}"] * n, pa.string()),
        calls=pa.array([[]] * n, schema.field("calls").type),
        retries_sum=pa.array([0] * n, pa.int32()),
    )
    return pa.table(cols, schema=schema)


def _merge_pass(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """A row joined with its finished row of a pass (``new_*``): answers and calls added."""
    rows = []
    for r in batch.to_pylist():
        state = {**json.loads(r["state"]), **json.loads(r["new_state"])}
        rows.append(
            {
                **{f.name: r[f.name] for f in schema if f.name not in CARRIED},
                "state": json.dumps(state),
                "calls": [*r["calls"], *r["new_calls"]],
                "retries_sum": (r["retries_sum"] or 0) + (r["new_retries"] or 0),
            }
        )
    return pa.Table.from_pylist(rows, schema=schema)


def _pass_finished(batch: pa.Table) -> pa.Table:
    """A pass's finished shard rows, renamed to be joined onto the carried rows."""
    import pyarrow.compute as pc

    done = batch.filter(pc.is_null(batch["error"]))
    return pa.table(
        {
            "id": done["id"],
            "new_state": done["state"],
            "new_calls": done["calls"],
            "new_retries": done["retries"],
        }
    )


def _in_pass(batch: pa.Table, turn: int, takes_part: bool) -> pa.Table:
    """The rows that take part in a pass of ``turn`` (they have that turn), or the others."""
    import pyarrow.compute as pc

    has = pc.greater(pc.list_value_length(batch["turns"]), turn)
    return batch.filter(has if takes_part else pc.invert(has))


def _final_rows(batch: pa.Table, mixture: Mixture, schema: pa.Schema) -> list[dict]:
    """Rows that finished every pass, in the resident path's shard schema."""
    now = time.time()
    out = []
    for r in batch.to_pylist():
        state = json.loads(r["state"])
        out.append(
            {
                **{n: r[n] for n in schema.names if n in r and n not in CARRIED},
                "messages": conversation(mixture, {**r, **state}),
                "calls": sorted(r["calls"], key=lambda c: (c["turn"], c["layer"], c["seat"])),
                "error": None,
                "finished_at": now,
                "retries": r["retries_sum"] or 0,
            }
        )
    return out


def _write_final(batch: pa.Table, run_dir: str, mixture: Mixture, schema: pa.Schema) -> pa.Table:
    """Ray Data step: rows that finished every pass, written as the run's shards by the task
    (only counts go on)."""
    rows = _final_rows(batch, mixture, schema)
    if rows:
        write_shard(run_dir, pa.Table.from_pylist(rows, schema=schema))
    return pa.table({"rows": [len(rows)]})


def _failed_ids(pass_dir, schema: pa.Schema) -> dict[str, str]:
    """The ids of a pass's rows that failed and never finished there, with the last error
    (failures are few)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from moaa_cluster.runs import storage

    files = storage.list_files(shard_dir(pass_dir), ".parquet")
    if not files:
        return {}
    fs, _ = storage.filesystem(files[0])
    t = pads.dataset([storage.filesystem(f)[1] for f in files], format="parquet", filesystem=fs)
    t = t.to_table(columns=["id", "error", "finished_at"])
    done = set(t.filter(pc.is_null(t["error"]))["id"].to_pylist())
    bad = t.filter(pc.is_valid(t["error"])).sort_by("finished_at").to_pylist()
    return {r["id"]: r["error"] for r in bad if r["id"] not in done}


def _partitions(n: int) -> int:
    return max(1, min(64, n // 100_000 + 1))


def run_layered(rows, job: LayeredJob, passes: list[Pass], host, opts: RunOptions) -> int:
    """Runs ``passes`` over ``rows`` (a Ray dataset, or a list of row dicts); writes the
    finished rows to the run's shards.

    Storage to storage: pass by pass, the rows still in the race are a Ray dataset in the
    object store, each row with its answers so far. A pass streams the rows that have its turn
    and have not finished it (its shards under ``<run_dir>/passes/<pass>`` say which) through
    its workers; the rows it finished are joined back (Ray Data ``join`` on ``id``) with their
    new answers, rows without that turn pass on untouched, rows that failed drop out and are
    recorded with the pass's label. The rows that finish every pass are written by Ray Data
    tasks as the run's shards. The driver holds dataset handles, counts and failed ids.

    Args:
        host: ``engines.host.EngineHost``; ``host.use(specs)`` makes a pass's engines resident.
        opts: The run's options: ``run_dir`` (passes write under ``<run_dir>/passes``) and
            ``progress``.

    Returns:
        Rows written (finished or failed).
    """
    import ray

    from moaa_cluster.pipeline.instructions import unfinished
    from moaa_cluster.runs import storage
    from moaa_cluster.runs.shards import finished_id_array, shard_dataset

    call_type = job.shard_schema.field("calls").type.value_type
    pass_in, pass_out = _pass_schemas(call_type, job.input_schema)
    carried = _carried_schema(job, call_type)
    if isinstance(rows, list):
        rows = rows_dataset(rows, job.input_schema)
    live = rows.select_columns(job.input_schema.names).map_batches(
        _start_carry, fn_kwargs={"schema": carried}, batch_format="pyarrow"
    )
    live = live.materialize()
    n_live = live.count()
    failed: dict[str, str] = {}
    for i, p in enumerate(passes, start=1):
        pass_dir = storage.join(opts.run_dir, "passes", p.name)
        taking = live.map_batches(
            _in_pass, fn_kwargs={"turn": p.turn, "takes_part": True}, batch_format="pyarrow"
        ).materialize()
        n_taking = taking.count()
        finished = ray.remote(num_cpus=0)(finished_id_array).remote(str(pass_dir))
        todo = taking.map_batches(
            unfinished, fn_kwargs={"finished": finished}, batch_format="pyarrow"
        ).materialize()
        n_todo = todo.count()
        print(
            f"pass {i}/{len(passes)}: {p.label}: {n_todo} rows to run, "
            f"{n_taking - n_todo} done before",
            flush=True,
        )
        if n_todo:
            host.use([job.specs[k] for k in p.models])
            stream_dataset(
                todo.select_columns(pass_in.names),
                n_todo,
                StreamJob(
                    PassWorker,
                    {
                        "mixture": job.mixture,
                        "specs": job.specs,
                        "settings": job.settings,
                        "step": p,
                        "output_schema": pass_out,
                        **job.worker_extra,
                    },
                    pass_out,
                    pass_dir,
                ),
                job.pool(f"synth pass {i}/{len(passes)}", opts.progress, n_todo * len(p.seats)),
            )
        lost = _failed_ids(pass_dir, pass_out)
        files = storage.list_files(shard_dir(pass_dir), ".parquet")
        others = live.map_batches(
            _in_pass, fn_kwargs={"turn": p.turn, "takes_part": False}, batch_format="pyarrow"
        )
        if files and n_taking:
            answered = shard_dataset(files, pass_out).map_batches(
                _pass_finished, batch_format="pyarrow"
            )
            merged = taking.join(
                answered, "inner", num_partitions=_partitions(n_taking), on=("id",)
            ).map_batches(_merge_pass, fn_kwargs={"schema": carried}, batch_format="pyarrow")
            live = others.union(merged)
        else:
            live = others
        live = live.materialize()
        for rid, error in lost.items():
            failed.setdefault(rid, f"{p.label}: {error}")
    written = 0
    if n_live:
        counts = live.map_batches(
            _write_final,
            fn_kwargs={
                "run_dir": str(opts.run_dir),
                "mixture": job.mixture,
                "schema": job.shard_schema,
            },
            batch_format="pyarrow",
        ).take_all()
        written = sum(c["rows"] for c in counts)
    if failed:
        written += _write_failed(rows, failed, job, opts)
    return written


def _write_failed(rows, failed: dict[str, str], job: LayeredJob, opts: RunOptions) -> int:
    """The rows that failed in some pass (few) as failed rows of the run's shards."""
    import pyarrow.compute as pc

    wanted = pa.array(sorted(failed), pa.string())
    picked = rows.map_batches(
        lambda b: b.filter(pc.is_in(b["id"], value_set=wanted)), batch_format="pyarrow"
    ).take_all()
    now = time.time()
    out = [
        {
            **{n: r[n] for n in job.input_schema.names},
            "messages": [],
            "calls": [],
            "error": failed[r["id"]],
            "finished_at": now,
            "retries": 0,
        }
        for r in picked
    ]
    if out:
        write_shard(opts.run_dir, pa.Table.from_pylist(out, schema=job.shard_schema))
    return len(out)
