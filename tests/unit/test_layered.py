"""Layer-by-layer execution planning and the pass worker (pure logic, fake engines)."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest

from moaa_cluster.engines.spec import ConfigError
from moaa_cluster.moa.mixture import Agent, Mixture, run_row
from moaa_cluster.pipeline.layered import PassWorker, _pass_schemas, layer_waves, plan_passes
from moaa_cluster.pipeline.synth import INPUT_SCHEMA, SHARD_SCHEMA, SynthSettings
from tests.unit.test_mixture import FakeBackend

SIZE = {"big": 8, "mid": 4, "small": 2, "agg": 4}


def capacity(gpus: int):
    """A fits() that accepts engines whose sizes sum to at most ``gpus``."""

    def fits(keys):
        need = sum(SIZE[k] for k in keys)
        if need > gpus:
            raise ConfigError(f"{sorted(keys)} need {need} GPUs, the cluster has {gpus}")

    return fits


def mix(*layers) -> Mixture:
    return Mixture(layers=tuple(tuple(Agent(m) for m in layer) for layer in layers))


PAPERISH = mix(["big", "mid", "small", "mid"], ["agg"])  # "mid" holds two seats


def test_everything_fits_runs_resident():
    assert plan_passes(PAPERISH, capacity(32), "auto", max_turns=2) is None
    assert plan_passes(PAPERISH, capacity(32), "resident", max_turns=2) is None


def test_auto_goes_layer_by_layer_with_waves_when_the_mixture_does_not_fit():
    passes = plan_passes(PAPERISH, capacity(12), "auto", max_turns=2)
    # layer 1: big + mid = 12 fit, small opens a second wave; layer 2: the aggregator alone
    assert [(p.turn, p.layer, p.models, p.seats) for p in passes] == [
        (0, 0, ("big", "mid"), (0, 1, 3)),
        (0, 0, ("small",), (2,)),
        (0, 1, ("agg",), (0,)),
        (1, 0, ("big", "mid"), (0, 1, 3)),
        (1, 0, ("small",), (2,)),
        (1, 1, ("agg",), (0,)),
    ]
    # every seat of every turn is answered exactly once
    seats = [(p.turn, p.layer, s) for p in passes for s in p.seats]
    assert sorted(seats) == sorted(
        (t, li, s)
        for t in range(2)
        for li, layer in enumerate(PAPERISH.layers)
        for s in range(len(layer))
    )
    assert len({p.name for p in passes}) == len(passes)


def test_layered_is_forced_even_when_everything_fits():
    passes = plan_passes(PAPERISH, capacity(64), "layered", max_turns=1)
    assert [p.models for p in passes] == [("big", "mid", "small"), ("agg",)]


def test_refusals_say_why():
    with pytest.raises(ConfigError, match="need 18 GPUs, the cluster has 16"):
        plan_passes(PAPERISH, capacity(16), "resident", max_turns=1)
    with pytest.raises(ConfigError, match=r"\['big'\] need 8 GPUs, the cluster has 6"):
        layer_waves(PAPERISH, capacity(6))  # one model alone cannot fit: no plan at all
    with pytest.raises(ConfigError, match="execution must be one of"):
        plan_passes(PAPERISH, capacity(64), "sometimes", max_turns=1)


def _run_passes(mixture, passes, row, backends, settings):
    """The passes' workers in order on one row, merging state as ``run_layered`` does."""
    pass_in, pass_out = _pass_schemas(SHARD_SCHEMA.field("calls").type.value_type, INPUT_SCHEMA)
    state: dict = {}
    calls: list = []
    for p in passes:
        if p.turn >= len(row["turns"]):
            continue
        worker = PassWorker(mixture, {}, settings, p, pass_out, backends=backends)
        batch = pa.Table.from_pylist([{**row, "state": json.dumps(state)}], schema=pass_in)

        async def one(w=worker, b=batch):
            return [t async for t in w(b)][0].to_pylist()[0]

        out = asyncio.run(one())
        assert out["error"] is None, out["error"]
        state.update(json.loads(out["state"]))
        calls.extend(out["calls"])
    return state, sorted(calls, key=lambda c: (c["turn"], c["layer"], c["seat"]))


@pytest.mark.parametrize("turns", [["q0"], ["q0", "q1"]])
def test_passes_give_the_same_answers_prompts_and_seeds_as_one_resident_row(turns):
    m = mix(["p1", "p2"], ["agg"])
    row = {"id": "r1", "source": "s", "source_id": "1", "system": None, "turns": turns}
    settings = SynthSettings(defaults={"max_tokens": 8}, seed=3, record_prompts=True)
    sizes = {"p1": 1, "p2": 1, "agg": 1}

    def fits(keys):  # one engine at a time: every model its own wave
        if sum(sizes[k] for k in keys) > 1:
            raise ConfigError("one at a time")

    passes = plan_passes(m, fits, "auto", max_turns=2)
    assert [p.models for p in passes] == [("p1",), ("p2",), ("agg",)] * 2

    resident = {n: FakeBackend(n, []) for n in ("p1", "p2", "agg")}
    answers, calls = asyncio.run(
        run_row(m, row, resident, defaults=settings.defaults, seed=3, record_prompts=True)
    )
    layered = {n: FakeBackend(n, []) for n in ("p1", "p2", "agg")}
    state, lcalls = _run_passes(m, passes, row, layered, settings)

    assert state == answers
    assert lcalls == calls  # same texts, prompts (recorded) and token counts
    for n in resident:  # same messages and sampling (seeds) sent to each model
        assert layered[n].received == resident[n].received
