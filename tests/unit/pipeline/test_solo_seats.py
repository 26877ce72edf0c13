"""Solo seats: answers generated for the Table 3 baselines that the aggregator never sees."""

from __future__ import annotations

import asyncio
import json

import pytest

from moaa_cluster import build
from moaa_cluster.engines.placement import Capacity
from moaa_cluster.moa.mixture import Agent, Mixture, run_row
from moaa_cluster.pipeline.derive import derive
from moaa_cluster.pipeline.layered import plan_passes
from moaa_cluster.pipeline.synth import SynthSettings
from tests.unit.moa.test_mixture import FakeBackend
from tests.unit.pipeline.test_layered import _run_passes

SOLO = Mixture(
    layers=(
        (Agent("p1"), Agent("p2"), Agent("agg", solo=True)),
        (Agent("agg"),),
    )
)


def test_the_aggregator_sees_the_proposers_but_not_the_solo_answer():
    backends = {n: FakeBackend(n, []) for n in ("p1", "p2", "agg")}
    row = {"id": "r1", "turns": ["q0", "q1"]}
    answers, calls = asyncio.run(run_row(SOLO, row, backends, record_prompts=True))
    assert [(c["turn"], c["layer"], c["seat"], c["model"]) for c in calls] == [
        (t, layer, seat, model)
        for t in (0, 1)
        for layer, seat, model in [(0, 0, "p1"), (0, 1, "p2"), (0, 2, "agg"), (1, 0, "agg")]
    ]
    for t in (0, 1):
        solo = answers[f"t{t}_l0_a2"]
        agg = next(c for c in calls if c["turn"] == t and c["layer"] == 1)
        k1 = json.loads(agg["prompt"])[0]["content"]
        assert answers[f"t{t}_l0_a0"] in k1 and answers[f"t{t}_l0_a1"] in k1
        assert solo not in k1  # generated for its own sake, never aggregated
        assert "\n3. " not in k1  # K.1 numbers the two aggregated proposals only
    # the solo seat answers turn 2 with the mixture's turn-1 answer as history, like the others
    solo_t1 = json.loads(next(c for c in calls if c["turn"] == 1 and c["seat"] == 2)["prompt"])
    assert solo_t1[1] == {"role": "assistant", "content": answers["t0_l1_a0"]}


def test_layer_by_layer_runs_the_solo_seat_in_its_layers_pass():
    row = {"id": "r1", "source": "s", "source_id": "1", "system": None, "turns": ["q0"]}
    settings = SynthSettings(defaults={"max_tokens": 8}, seed=3, record_prompts=True)
    passes = plan_passes(SOLO, Capacity(), "layered", max_turns=1)
    resident = {n: FakeBackend(n, []) for n in ("p1", "p2", "agg")}
    answers, calls = asyncio.run(
        run_row(SOLO, row, resident, defaults=settings.defaults, seed=3, record_prompts=True)
    )
    layered = {n: FakeBackend(n, []) for n in ("p1", "p2", "agg")}
    state, lcalls = _run_passes(SOLO, passes, row, layered, settings)
    assert state == answers and lcalls == calls


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (((Agent("p1", solo=True),), (Agent("agg"),)), "at least one seat that is not solo"),
        (((Agent("p1", solo=True), Agent("p2")), (Agent("agg"),)), "solo seats must come after"),
        (((Agent("p1"),), (Agent("agg", solo=True),)), "aggregator cannot be a solo seat"),
    ],
)
def test_solo_seats_are_refused_where_they_make_no_sense(layers, match):
    with pytest.raises(ValueError, match=match):
        Mixture(layers=layers)


def test_paper_ablations_derive_five_teachers_with_the_aggregator_model(compose):
    mix, specs, _ = build.mixture(compose("synth", ["mixture=paper_stage1_ablations"]).mixture)
    paper, _, _ = build.mixture(compose("synth", ["mixture=paper_stage1"]).mixture)
    assert mix.aggregated(0) == 4 and len(mix.layers[0]) == 5
    assert mix.layers[1] == paper.layers[1]  # the SFT data is paper_stage1's
    names = {k: s.name for k, s in specs.items()}
    row = {
        "id": "r",
        "source": "s",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "aggregated"},
        ],
        "calls": [
            {"turn": 0, "layer": 0, "seat": i, "model": names[a.model], "text": f"answer {i}"}
            for i, a in enumerate(mix.layers[0])
        ],
    }
    combined = derive([row], "combined")
    assert [r["teacher"] for r in combined] == [names[a.model] for a in mix.layers[0]]
    (single,) = derive([row], "single", model="Qwen1.5-110B-Chat")
    assert single["messages"][-1]["content"] == "answer 4"
