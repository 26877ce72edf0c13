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

import pyarrow as pa

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Mixture, Step, conversation, run_steps
from moaa_cluster.pipeline.frame import RowWorker, stream_rows
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


def layer_waves(mixture: Mixture, fits) -> list[list[tuple[str, ...]]]:
    """For each layer, its distinct models grouped into waves that fit together.

    Greedy in seat order: a model joins the current wave if ``fits`` accepts the wave with
    it, otherwise it opens the next wave.

    Args:
        fits: ``fits(keys)`` returns None or raises ``ConfigError`` saying why those engines
            cannot be resident together.

    Raises:
        ConfigError: A single model does not fit alone.
    """
    out = []
    for layer in mixture.layers:
        models = list(dict.fromkeys(a.model for a in layer))
        waves: list[list[str]] = []
        wave: list[str] = []
        for m in models:
            try:
                fits([*wave, m])
                wave.append(m)
            except ConfigError:
                if not wave:
                    raise
                waves.append(wave)
                fits([m])  # alone it must fit, or the mixture cannot run here at all
                wave = [m]
        waves.append(wave)
        out.append([tuple(w) for w in waves])
    return out


def plan_passes(mixture: Mixture, fits, execution: str, max_turns: int) -> list[Pass] | None:
    """The passes a run makes, or None when all engines are resident together.

    Args:
        fits: See :func:`layer_waves`.
        execution: ``auto`` (resident when everything fits, else layered), ``resident``
            (refuse when it does not fit) or ``layered`` (always pass by pass).
        max_turns: The most turns of any row.
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {list(EXECUTIONS)}, got {execution!r}")
    if execution != "layered":
        try:
            fits(mixture.models)
            return None
        except ConfigError as exc:
            if execution == "resident":
                raise
            log.info("the mixture's engines do not fit together (%s): running layer by layer", exc)
    waves = layer_waves(mixture, fits)
    passes = []
    for turn in range(max_turns):
        for layer_idx, layer in enumerate(mixture.layers):
            for wave in waves[layer_idx]:
                seats = tuple(i for i, a in enumerate(layer) if a.model in wave)
                passes.append(Pass(turn, layer_idx, seats, wave))
    return passes


def planner_fits(specs: dict[str, ModelSpec], cluster: dict):
    """``fits(keys)``: the pre-flight check (``runtime.preflight``) on those models' engines."""
    from moaa_cluster import runtime

    def fits(keys) -> None:
        runtime.preflight(cluster, [specs[k] for k in keys])

    return fits


def _pass_schemas(call_type: pa.DataType, input_schema: pa.Schema) -> tuple[pa.Schema, pa.Schema]:
    pass_in = pa.schema([*input_schema, ("state", pa.string())])
    pass_out = pa.schema(
        [
            ("id", pa.string()),
            ("state", pa.string()),  # JSON: this pass's answer columns
            ("calls", pa.list_(call_type)),
            ("error", pa.string()),
            ("finished_at", pa.float64()),
            ("retries", pa.int32()),
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
        from moaa_cluster.moa.budget import load_fitters

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
            self.backends,
            s.defaults,
            s.seed,
            s.record_prompts,
            self.fits,
        )
        out["state"] = json.dumps(
            {st.column: text for st, (text, _) in zip(steps, results, strict=True)}
        )
        out["calls"] = [rec for _, rec in results]


def run_layered(
    rows: list[dict],
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    settings,
    run_dir: Path,
    passes: list[Pass],
    host,
    *,
    input_schema: pa.Schema,
    shard_schema: pa.Schema,
    progress: bool = True,
) -> int:
    """Runs ``passes`` over ``rows``; writes the finished rows to the run's shards.

    Args:
        host: ``runtime.EngineHost``; ``host.use(specs)`` makes a pass's engines resident.
        input_schema, shard_schema: The resident path's row and shard schemas
            (``pipeline.synth``), so both paths write the same shards.

    Returns:
        Rows written (finished or failed).
    """
    pass_in, pass_out = _pass_schemas(shard_schema.field("calls").type.value_type, input_schema)
    states: dict[str, dict] = {r["id"]: {} for r in rows}
    calls: dict[str, list] = {r["id"]: [] for r in rows}
    retries: dict[str, int] = {r["id"]: 0 for r in rows}
    failed: dict[str, str] = {}
    for i, p in enumerate(passes, start=1):
        pass_dir = Path(run_dir) / "passes" / p.name
        todo = [r for r in rows if r["id"] not in failed and p.turn < len(r["turns"])]
        ok, bad = consolidate(pass_dir)
        done_before = {r["id"] for r in ok}
        remaining = [r for r in todo if r["id"] not in done_before]
        print(
            f"pass {i}/{len(passes)}: {p.label}: {len(remaining)} rows to run, "
            f"{len(todo) - len(remaining)} done before",
            flush=True,
        )
        if remaining:
            host.use([specs[k] for k in p.models])
            stream_rows(
                [
                    {**{n: r[n] for n in input_schema.names}, "state": json.dumps(states[r["id"]])}
                    for r in remaining
                ],
                pass_in,
                PassWorker,
                {
                    "mixture": mixture,
                    "specs": specs,
                    "settings": settings,
                    "step": p,
                    "output_schema": pass_out,
                },
                pass_out,
                pass_dir,
                batch_size=settings.batch_size,
                workers=settings.workers,
                worker_cpus=settings.worker_cpus,
                desc=f"synth pass {i}/{len(passes)}",
                progress=progress,
                rows_per_block=settings.rows_per_block,
            )
            ok, bad = consolidate(pass_dir)
        wanted = {r["id"] for r in todo}
        for r in ok:
            if r["id"] in wanted:
                states[r["id"]].update(json.loads(r["state"]))
                calls[r["id"]].extend(r["calls"])
                retries[r["id"]] += r["retries"] or 0
        for r in bad:
            if r["id"] in wanted:
                failed[r["id"]] = f"{p.label}: {r['error']}"
    out = []
    for r in rows:
        rid = r["id"]
        error = failed.get(rid)
        out.append(
            {
                **{n: r[n] for n in input_schema.names},
                "messages": [] if error else conversation(mixture, {**r, **states[rid]}),
                "calls": sorted(calls[rid], key=lambda c: (c["turn"], c["layer"], c["seat"])),
                "error": error,
                "finished_at": time.time(),
                "retries": retries[rid],
            }
        )
    if out:
        write_shard(run_dir, pa.Table.from_pylist(out, schema=shard_schema))
    return len(out)
