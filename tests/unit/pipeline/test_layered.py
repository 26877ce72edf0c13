"""Layer-by-layer execution planning and the pass worker (pure logic, fake engines)."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.engines.placement import Capacity
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.mixture import Agent, Mixture, run_row
from moaa_cluster.pipeline.layered import (
    LayeredJob,
    PassWorker,
    _pass_schemas,
    layer_waves,
    plan_passes,
    run_layered,
)
from moaa_cluster.pipeline.synth import INPUT_SCHEMA, SHARD_SCHEMA, SynthSettings
from moaa_cluster.runs.options import RunOptions
from tests.unit.moa.test_mixture import FakeBackend

SIZE = {"big": 8, "mid": 4, "small": 2, "agg": 4}


def capacity(gpus: int) -> Capacity:
    """A cluster that holds engines whose sizes sum to at most ``gpus``."""

    def fits(keys):
        need = sum(SIZE[k] for k in keys)
        if need > gpus:
            raise ConfigError(f"{sorted(keys)} need {need} GPUs, the cluster has {gpus}")

    return Capacity(size=SIZE.get, fits=fits)


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


def test_moaa_plan_waves_are_the_passes_synth_runs():
    """Models of 4, 6 and 4 GPUs in one layer on an 8-GPU node: both split it into the same
    2 waves, first-fit decreasing (6 | 4 + 4); greedy in seat order made 3 (4 | 6 | 4)."""
    from moaa_cluster.engines import placement
    from moaa_cluster.engines.host import preflight_capacity
    from moaa_cluster.engines.spec import ModelSpec
    from moaa_cluster.engines.workload import synth_workload

    def gpu_spec(name: str, tp: int, replicas: int = 1) -> ModelSpec:
        return ModelSpec(
            name=name,
            path=f"/nonexistent/{name}",
            tensor_parallel_size=tp,
            replicas=replicas,
            params_b=8.0,
            accelerator_type="A100-80G",
        )

    specs = {"a": gpu_spec("a", 4), "b": gpu_spec("b", 2, replicas=3), "c": gpu_spec("c", 4)}
    m = mix(["a", "b", "c"], ["a"])
    cluster = {"nodes": 1, "gpus_per_node": 8, "gpu_memory_gb": 80, "accelerator_type": "A100-80G"}
    inventory = placement.inventory_from_cluster(cluster)

    work = synth_workload("synth", m, {"max_tokens": 64})
    plan = placement.plan(work, specs, inventory, placement.PlanSettings(tensor_parallel="config"))
    passes = plan_passes(m, preflight_capacity(cluster, specs), "auto", max_turns=1)

    assert plan.mode == "waves"
    assert [s.engines for s in plan.stages] == [("b",), ("a", "c"), ("a",)]
    assert [s.label for s in plan.stages] == ["layer 1 wave 1/2", "layer 1 wave 2/2", "layer 2"]
    assert [p.models for p in passes] == [s.engines for s in plan.stages]
    assert [(p.layer, p.seats) for p in passes] == [(0, (1,)), (0, (0, 2)), (1, (0,))]


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

    passes = plan_passes(m, Capacity(sizes.get, fits), "auto", max_turns=2)
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


# -- the context budget in the pass worker; shards from before `context` existed ---------------


def _fake_fitter(max_model_len: int):
    from moaa_cluster.moa.budget import ContextFitter

    def count(messages):  # one character, one token
        return sum(len(m["content"]) for m in messages)

    return ContextFitter(max_model_len, count, len, lambda t, n: t[:n], marker="[cut]")


def _one_pass(mixture, p, row, state, backends, fits):
    pass_in, pass_out = _pass_schemas(SHARD_SCHEMA.field("calls").type.value_type, INPUT_SCHEMA)
    settings = SynthSettings(defaults={"max_tokens": 16})
    worker = PassWorker(mixture, {}, settings, p, pass_out, backends=backends, fits=fits)
    batch = pa.Table.from_pylist([{**row, "state": json.dumps(state)}], schema=pass_in)

    async def one():
        return [t async for t in worker(batch)][0].to_pylist()[0]

    return asyncio.run(one())


def test_the_pass_worker_fits_the_aggregators_prompt_and_records_the_cut():
    from moaa_cluster.moa.prompts import aggregate_system_prompt

    m = mix(["p1", "p2"], ["agg"])
    agg_pass = plan_passes(m, Capacity(), "layered", max_turns=1)[1]
    row = {"id": "r1", "source": "s", "source_id": "1", "system": None, "turns": ["q"]}
    state = {"t0_l0_a0": "a" * 400, "t0_l0_a1": "b" * 100}
    k1 = len(aggregate_system_prompt(["", ""]))
    backends = {"agg": FakeBackend("agg", [])}
    budget = k1 + 1 + 300 + 16  # header, question, 300 tokens of proposals, max_tokens 16
    out = _one_pass(m, agg_pass, row, state, backends, {"agg": _fake_fitter(budget)})
    assert out["error"] is None
    (call,) = out["calls"]
    # 300 - the short proposal's 100 - one 5-token marker = 195 kept of the long one
    assert json.loads(call["context"])["cut"] == [
        {"what": "proposal", "seat": 0, "tokens": 400, "kept": 195}
    ]
    sent = backends["agg"].received[0][0]
    assert sent[0]["content"] == aggregate_system_prompt(["a" * 195 + "[cut]", "b" * 100])


def test_a_prompt_that_cannot_fit_fails_the_row_with_the_reason():
    m = mix(["p1", "p2"], ["agg"])
    agg_pass = plan_passes(m, Capacity(), "layered", max_turns=1)[1]
    row = {"id": "r1", "source": "s", "source_id": "1", "system": None, "turns": ["q"]}
    backends = {"agg": FakeBackend("agg", [])}
    out = _one_pass(
        m, agg_pass, row, {"t0_l0_a0": "x", "t0_l0_a1": "y"}, backends, {"agg": _fake_fitter(64)}
    )
    assert out["error"].startswith(
        "ContextOverflow: turn 1, layer 2, seat 0: prompt too long for model (max_model_len 64)"
    )
    assert backends["agg"].received == []  # never sent


OLD_CALL = pa.struct(
    [f for f in SHARD_SCHEMA.field("calls").type.value_type if f.name != "context"]
)


def _old_call(turn: int, layer: int, seat: int, model: str) -> dict:
    return {
        "turn": turn,
        "layer": layer,
        "seat": seat,
        "model": model,
        "text": f"{model}-t{turn}",
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "finish_reason": "stop",
        "seconds": 0.1,
        "prompt": None,
    }


def _write_old_pass_shards(run_dir, mixture, passes, rows) -> None:
    """Pass shards of ``rows`` as the code before ``context`` wrote them (every pass done)."""
    from moaa_cluster.runs.shards import write_shard

    _, old_out = _pass_schemas(OLD_CALL, INPUT_SCHEMA)
    for p in passes:
        models = {s: mixture.layers[p.layer][s].model for s in p.seats}
        out = [
            {
                "id": r["id"],
                "state": json.dumps({f"t0_l{p.layer}_a{s}": f"{models[s]}-t0" for s in p.seats}),
                "calls": [_old_call(0, p.layer, s, models[s]) for s in p.seats],
                "error": None,
                "finished_at": 1.0,
                "retries": 0,
            }
            for r in rows
        ]
        write_shard(run_dir / "passes" / p.name, pa.Table.from_pylist(out, schema=old_out))


def _finished(row: dict, calls: list[dict]) -> dict:
    return {
        **row,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
        "calls": calls,
        "error": None,
        "finished_at": 1.0,
        "retries": 0,
    }


def test_shards_written_before_the_context_field_still_resume_and_consolidate(tmp_path, ray_local):
    from moaa_cluster.pipeline.synth_outputs import summary_lines, write_outputs
    from moaa_cluster.runs.shards import finished_id_array, write_shard

    m = mix(["p1", "p2"], ["agg"])
    rows = [
        {"id": f"r{i}", "source": "s", "source_id": str(i), "system": None, "turns": ["q"]}
        for i in range(4)
    ]
    passes = plan_passes(m, Capacity(), "layered", max_turns=1)
    # a layered run of r0, r1 killed after its passes, and a resident run's shard of r2, both
    # written before `context` existed
    _write_old_pass_shards(tmp_path, m, passes, rows[:2])
    old_shard = pa.schema(
        [(f.name, pa.list_(OLD_CALL) if f.name == "calls" else f.type) for f in SHARD_SCHEMA]
    )
    old_row = _finished(rows[2], [_old_call(0, 0, 0, "p1")])
    write_shard(tmp_path, pa.Table.from_pylist([old_row], schema=old_shard))
    assert finished_id_array(tmp_path).to_pylist() == ["r2"]
    # the new code resumes the layered run: every pass is done, so no engine is started
    job = LayeredJob(m, {}, SynthSettings(), INPUT_SCHEMA, SHARD_SCHEMA)
    run_layered(rows[:2], job, passes, None, RunOptions(tmp_path, progress=False))
    # and a new shard with a cut call
    cut_call = {**_old_call(0, 1, 0, "agg"), "context": '{"cut": [], "budget": 8}'}
    new_row = _finished(rows[3], [cut_call])
    write_shard(tmp_path, pa.Table.from_pylist([new_row], schema=SHARD_SCHEMA))

    assert finished_id_array(tmp_path).to_pylist() == ["r0", "r1", "r2", "r3"]
    counts = write_outputs(tmp_path, m)
    assert counts["rows_ok"] == 4 and counts["rows_failed"] == 0
    assert counts["calls_with_cut_context"] == 1 and counts["rows_with_cut_context"] == 1
    assert "context: 1 calls in 1 rows had carried answers shortened" in "\n".join(
        summary_lines(counts, {}, tmp_path)
    )
    by_id = {r["id"]: r for r in pq.read_table(tmp_path / "sft.parquet").to_pylist()}
    assert [c["context"] for c in by_id["r0"]["calls"]] == [None, None, None]
    assert [c["text"] for c in by_id["r0"]["calls"]] == ["p1-t0", "p2-t0", "agg-t0"]
    assert by_id["r0"]["messages"][-1] == {"role": "assistant", "content": "agg-t0"}
    assert by_id["r2"]["calls"][0]["context"] is None
    assert by_id["r3"]["calls"][0]["context"] == cut_call["context"]


def test_rows_that_cannot_fit_are_counted_and_said_in_the_summary(tmp_path, ray_local):
    from moaa_cluster.pipeline.synth_outputs import summary_lines, write_outputs
    from moaa_cluster.runs.shards import write_shard

    row = {"id": "r0", "source": "s", "source_id": "0", "system": None, "turns": ["q"]}
    failed = {
        **_finished(row, []),
        "messages": [],
        "error": "ContextOverflow: turn 1, layer 2, seat 0: prompt too long for agg",
    }
    write_shard(tmp_path, pa.Table.from_pylist([failed], schema=SHARD_SCHEMA))
    counts = write_outputs(tmp_path, mix(["p1"], ["agg"]))
    assert (counts["rows_failed"], counts["rows_failed_context"]) == (1, 1)
    assert counts["calls_with_cut_context"] == 0
    text = "\n".join(summary_lines(counts, {}, tmp_path))
    assert "1 of them cannot fit a model's max_model_len" in text
    assert "carried answers shortened" not in text
    reject = json.loads((tmp_path / "rejects.jsonl").read_text())
    assert reject["stage"] == "inference" and reject["reason"] == failed["error"]
