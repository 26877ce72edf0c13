"""Mixture planning, message building and run_row with an in-test fake backend."""

from __future__ import annotations

import asyncio
import json

import pytest

from moaa_cluster.engines.backends import Completion
from moaa_cluster.moa.mixture import (
    Agent,
    Mixture,
    Step,
    answer_column,
    conversation,
    final_column,
    plan_steps,
    run_row,
    step_messages,
    step_seed,
)
from moaa_cluster.moa.prompts import AGGREGATE_AND_SYNTHESIZE, aggregate_system_prompt


def two_layer(**agg_sampling) -> Mixture:
    return Mixture(
        layers=(
            (Agent("p1", {"temperature": 0.1}), Agent("p2")),
            (Agent("agg", dict(agg_sampling)),),
        )
    )


def three_layer() -> Mixture:
    return Mixture(
        layers=(
            (Agent("p1"), Agent("p2")),
            (Agent("r1"), Agent("r2"), Agent("r3")),
            (Agent("agg"),),
        )
    )


def filled_row(**extra) -> dict:
    """A two-turn row with every answer column of ``two_layer()`` filled."""
    row = {"id": "row-1", "turns": ["q0", "q1"], **extra}
    for t in range(2):
        row[answer_column(t, 0, 0)] = f"p1-t{t}"
        row[answer_column(t, 0, 1)] = f"p2-t{t}"
        row[answer_column(t, 1, 0)] = f"agg-t{t}"
    return row


# -- construction --------------------------------------------------------------------------


def test_mixture_two_and_three_layers():
    m2 = two_layer()
    assert len(m2.layers) == 2
    assert m2.models == ["p1", "p2", "agg"]
    m3 = three_layer()
    assert len(m3.layers) == 3
    assert m3.models == ["p1", "p2", "r1", "r2", "r3", "agg"]


def test_models_distinct_in_first_use_order():
    m = Mixture(layers=((Agent("a"), Agent("b")), (Agent("b"), Agent("a")), (Agent("a"),)))
    assert m.models == ["a", "b"]


def test_mixture_rejects_single_layer():
    with pytest.raises(ValueError, match="at least two layers"):
        Mixture(layers=((Agent("p1"),),))


def test_mixture_rejects_two_aggregators():
    with pytest.raises(ValueError, match="single aggregator, got 2"):
        Mixture(layers=((Agent("p1"),), (Agent("a1"), Agent("a2"))))


def test_mixture_rejects_empty_layer():
    with pytest.raises(ValueError, match="at least one model"):
        Mixture(layers=((), (Agent("agg"),)))
    with pytest.raises(ValueError, match="at least one model"):
        Mixture(layers=((Agent("p1"),), (), (Agent("agg"),)))


def test_agent_equality_ignores_sampling():
    assert Agent("m", {"temperature": 0.2}) == Agent("m", {"temperature": 0.9})
    assert hash(Agent("m", {"temperature": 0.2})) == hash(Agent("m"))


# -- planning ------------------------------------------------------------------------------


def test_answer_and_final_columns():
    assert answer_column(1, 0, 2) == "t1_l0_a2"
    assert final_column(two_layer(), 0) == "t0_l1_a0"
    assert final_column(three_layer(), 3) == "t3_l2_a0"


def test_plan_steps_order_and_count():
    m = two_layer()
    steps = plan_steps(m, max_turns=2)
    assert len(steps) == 6
    assert [(s.turn, s.layer, s.index, s.agent.model) for s in steps] == [
        (0, 0, 0, "p1"),
        (0, 0, 1, "p2"),
        (0, 1, 0, "agg"),
        (1, 0, 0, "p1"),
        (1, 0, 1, "p2"),
        (1, 1, 0, "agg"),
    ]
    assert [s.column for s in steps] == [
        "t0_l0_a0",
        "t0_l0_a1",
        "t0_l1_a0",
        "t1_l0_a0",
        "t1_l0_a1",
        "t1_l1_a0",
    ]


def test_plan_steps_three_layers():
    steps = plan_steps(three_layer(), max_turns=2)
    assert len(steps) == 2 * (2 + 3 + 1)
    assert [(s.layer, s.index) for s in steps[:6]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
    ]
    assert plan_steps(three_layer(), max_turns=0) == []


# -- step_messages -------------------------------------------------------------------------


def _step(m: Mixture, turn: int, layer: int, index: int = 0) -> Step:
    return Step(turn, layer, index, m.layers[layer][index])


def test_step_messages_turn0_layer0():
    m = two_layer()
    row = {"id": "r", "turns": ["q0"]}
    for i in range(2):
        assert step_messages(m, _step(m, 0, 0, i), row) == [{"role": "user", "content": "q0"}]


def test_step_messages_turn0_layer0_with_system():
    m = two_layer()
    row = {"id": "r", "turns": ["q0"], "system": "Be kind."}
    assert step_messages(m, _step(m, 0, 0), row) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "q0"},
    ]


def test_step_messages_turn0_layer1_aggregator():
    m = two_layer()
    row = filled_row()
    assert step_messages(m, _step(m, 0, 1), row) == [
        {"role": "system", "content": AGGREGATE_AND_SYNTHESIZE + "\n1. p1-t0\n2. p2-t0"},
        {"role": "user", "content": "q0"},
    ]


def test_step_messages_turn0_layer1_with_system():
    m = two_layer()
    row = filled_row(system="Be kind.")
    assert step_messages(m, _step(m, 0, 1), row) == [
        {"role": "system", "content": "Be kind.\n\n" + aggregate_system_prompt(["p1-t0", "p2-t0"])},
        {"role": "user", "content": "q0"},
    ]


def test_step_messages_turn1_layer0_uses_aggregate_history():
    m = two_layer()
    row = filled_row()
    expected = [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": row[final_column(m, 0)]},
        {"role": "user", "content": "q1"},
    ]
    for i in range(2):
        msgs = step_messages(m, _step(m, 1, 0, i), row)
        assert msgs == expected
        assert msgs[1]["content"] == "agg-t0"
        contents = [x["content"] for x in msgs]
        assert "p1-t0" not in contents and "p2-t0" not in contents


def test_step_messages_turn1_layer1():
    m = two_layer()
    row = filled_row()
    assert step_messages(m, _step(m, 1, 1), row) == [
        {"role": "system", "content": aggregate_system_prompt(["p1-t1", "p2-t1"])},
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "agg-t0"},
        {"role": "user", "content": "q1"},
    ]


def test_step_messages_three_layers_middle_sees_only_previous_layer():
    m = three_layer()
    row = {
        "id": "r",
        "turns": ["q0"],
        "t0_l0_a0": "A",
        "t0_l0_a1": "B",
        "t0_l1_a0": "C",
        "t0_l1_a1": "D",
        "t0_l1_a2": "E",
    }
    assert step_messages(m, _step(m, 0, 1, 2), row)[0]["content"] == aggregate_system_prompt(
        ["A", "B"]
    )
    assert step_messages(m, _step(m, 0, 2), row)[0]["content"] == aggregate_system_prompt(
        ["C", "D", "E"]
    )


def test_step_messages_none_past_last_turn():
    m = two_layer()
    row = {"id": "r", "turns": ["only"], "t0_l0_a0": "x", "t0_l0_a1": "y", "t0_l1_a0": "z"}
    assert step_messages(m, _step(m, 1, 0), row) is None
    assert step_messages(m, _step(m, 1, 1), row) is None


def test_conversation():
    m = two_layer()
    assert conversation(m, filled_row()) == [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "agg-t0"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "agg-t1"},
    ]
    assert conversation(m, filled_row(system="S"))[0] == {"role": "system", "content": "S"}
    assert len(conversation(m, filled_row(system="S"))) == 5


# -- step_seed -----------------------------------------------------------------------------


def test_step_seed():
    m = two_layer()
    steps = plan_steps(m, 2)
    assert step_seed(None, "r", steps[0]) is None
    seeds = [step_seed(7, "r", s) for s in steps]
    assert seeds == [step_seed(7, "r", s) for s in steps]
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert step_seed(8, "r", steps[0]) != seeds[0]
    assert step_seed(7, "other", steps[0]) != seeds[0]


# -- run_row with a fake backend -----------------------------------------------------------


class FakeBackend:
    """Answers with a deterministic text and records every request it got."""

    def __init__(self, name: str, log: list):
        self.name = name
        self.log = log
        self.received: list[tuple[list[dict], dict]] = []

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        self.received.append((messages, dict(sampling)))
        self.log.append(self.name)
        await asyncio.sleep(0)
        n = len(self.received)
        return Completion(
            text=f"{self.name}#{n}",
            prompt_tokens=10 * n,
            completion_tokens=n,
            finish_reason="stop",
            model=self.name,
            seconds=0.0012345,
        )


def _backends(names=("p1", "p2", "agg")):
    log: list[str] = []
    return {n: FakeBackend(n, log) for n in names}, log


def _run(mixture, row, backends, **kw):
    return asyncio.run(run_row(mixture, row, backends, **kw))


def test_run_row_answers_and_flow():
    m = two_layer()
    row = {"id": "r1", "turns": ["q0", "q1"]}
    backends, log = _backends()
    answers, calls = _run(m, row, backends)

    assert answers == {
        "t0_l0_a0": "p1#1",
        "t0_l0_a1": "p2#1",
        "t0_l1_a0": "agg#1",
        "t1_l0_a0": "p1#2",
        "t1_l0_a1": "p2#2",
        "t1_l1_a0": "agg#2",
    }
    assert row == {"id": "r1", "turns": ["q0", "q1"]}  # input row untouched

    # Aggregator saw every proposer answer of its turn, in seat order.
    agg_msgs = [msgs for msgs, _ in backends["agg"].received]
    assert agg_msgs[0][0] == {
        "role": "system",
        "content": aggregate_system_prompt(["p1#1", "p2#1"]),
    }
    assert agg_msgs[0][1:] == [{"role": "user", "content": "q0"}]
    assert agg_msgs[1][0] == {
        "role": "system",
        "content": aggregate_system_prompt(["p1#2", "p2#2"]),
    }

    # Turn 2 (index 1) saw the turn-1 aggregate as the assistant history, for every model.
    history = [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "agg#1"},
        {"role": "user", "content": "q1"},
    ]
    assert backends["p1"].received[1][0] == history
    assert backends["p2"].received[1][0] == history
    assert agg_msgs[1][1:] == history

    # The next layer starts only when the previous one is back; turns in order.
    assert log[2] == "agg" and log[5] == "agg"
    assert sorted(log[:2]) == ["p1", "p2"] and sorted(log[3:5]) == ["p1", "p2"]


def test_run_row_calls_records():
    m = two_layer()
    backends, _ = _backends()
    _, calls = _run(m, {"id": "r1", "turns": ["q0", "q1"]}, backends)
    assert len(calls) == 6
    assert [(c["turn"], c["layer"], c["seat"], c["model"]) for c in calls] == [
        (s.turn, s.layer, s.index, s.agent.model) for s in plan_steps(m, 2)
    ]
    first = calls[0]
    assert first == {
        "turn": 0,
        "layer": 0,
        "seat": 0,
        "model": "p1",
        "text": "p1#1",
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "finish_reason": "stop",
        "seconds": 0.001,
        "prompt": None,
        "context": None,  # no fitter: nothing shortened
        "system_folded": False,
    }
    assert [c["text"] for c in calls] == ["p1#1", "p2#1", "agg#1", "p1#2", "p2#2", "agg#2"]


def test_run_row_single_turn_row_makes_one_turn_of_calls():
    m = two_layer()
    backends, _ = _backends()
    answers, calls = _run(m, {"id": "r", "turns": ["only"]}, backends)
    assert len(calls) == 3
    assert set(answers) == {"t0_l0_a0", "t0_l0_a1", "t0_l1_a0"}


def test_run_row_sampling_override_and_seed():
    m = two_layer(temperature=0.5, max_tokens=64)
    backends, _ = _backends()
    defaults = {"temperature": 0.9, "max_tokens": 128, "top_p": 0.95}
    _run(m, {"id": "r1", "turns": ["q0", "q1"]}, backends, defaults=defaults, seed=1234)

    p1 = [s for _, s in backends["p1"].received]
    p2 = [s for _, s in backends["p2"].received]
    agg = [s for _, s in backends["agg"].received]
    # p1 overrides temperature only; p2 takes the defaults; agg overrides two keys.
    assert p1[0]["temperature"] == 0.1 and p1[0]["max_tokens"] == 128 and p1[0]["top_p"] == 0.95
    assert p2[0]["temperature"] == 0.9 and p2[0]["max_tokens"] == 128
    assert agg[0]["temperature"] == 0.5 and agg[0]["max_tokens"] == 64 and agg[0]["top_p"] == 0.95
    assert defaults == {"temperature": 0.9, "max_tokens": 128, "top_p": 0.95}  # not mutated
    assert m.layers[0][0].sampling == {"temperature": 0.1}  # agent not mutated

    # Seeds derived per step, deterministic and distinct.
    steps = plan_steps(m, 2)
    by_model = {"p1": iter(p1), "p2": iter(p2), "agg": iter(agg)}
    seeds = []
    for s in steps:
        got = next(by_model[s.agent.model])["seed"]
        assert got == step_seed(1234, "r1", s)
        seeds.append(got)
    assert len(set(seeds)) == len(seeds)

    backends2, _ = _backends()
    _run(m, {"id": "r1", "turns": ["q0", "q1"]}, backends2, defaults=defaults, seed=1234)
    assert [s["seed"] for _, s in backends2["p1"].received] == [s["seed"] for s in p1]


def test_run_row_explicit_seed_wins():
    m = Mixture(layers=((Agent("p1", {"seed": 42}), Agent("p2")), (Agent("agg"),)))
    backends, _ = _backends()
    _run(m, {"id": "r", "turns": ["q"]}, backends, defaults={"temperature": 0.0}, seed=5)
    assert backends["p1"].received[0][1]["seed"] == 42
    assert backends["p2"].received[0][1]["seed"] == step_seed(5, "r", Step(0, 0, 1, m.layers[0][1]))


def test_run_row_without_seed_sends_none():
    m = two_layer()
    backends, _ = _backends()
    _run(m, {"id": "r", "turns": ["q"]}, backends)
    assert all(s["seed"] is None for b in backends.values() for _, s in b.received)


def test_run_row_record_prompts():
    m = two_layer()
    backends, _ = _backends()
    _, calls = _run(
        m, {"id": "r", "turns": ["q0", "q1"], "system": "Sys"}, backends, record_prompts=True
    )
    assert all(isinstance(c["prompt"], str) for c in calls)
    received = {name: iter(msgs for msgs, _ in b.received) for name, b in backends.items()}
    for c in calls:
        assert json.loads(c["prompt"]) == next(received[c["model"]])
    assert json.loads(calls[0]["prompt"]) == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "q0"},
    ]
    agg_t0 = json.loads(calls[2]["prompt"])
    assert agg_t0[0]["content"] == "Sys\n\n" + aggregate_system_prompt(["p1#1", "p2#1"])


# -- the context budget on the call path ---------------------------------------------------


class ScriptedBackend(FakeBackend):
    """A fake engine whose answers are given texts (one per call, in order)."""

    def __init__(self, name: str, texts: list[str]):
        super().__init__(name, [])
        self.texts = list(texts)

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        await super().chat(messages, sampling)
        return Completion(self.texts.pop(0), 0, 0, "length", self.name)


@pytest.fixture(scope="module")
def smollm2():
    from tests.unit.moa.test_budget import SMOLLM2

    if not (SMOLLM2 / "tokenizer.json").exists():
        pytest.skip(f"{SMOLLM2} not prepared (make models)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SMOLLM2), local_files_only=True)


def test_run_row_fits_four_2048_token_proposals_into_the_aggregators_8192(smollm2):
    from moaa_cluster.moa.budget import MARKER
    from moaa_cluster.moa.fitters import tokenizer_fitter
    from tests.unit.moa.test_budget import answer_of, engine_count

    proposers = [f"p{i}" for i in range(4)]
    m = Mixture(layers=(tuple(Agent(p) for p in proposers), (Agent("agg"),)))
    long = {
        n: [answer_of(smollm2, 2048, 2 * i + t) for t in range(2)] for i, n in enumerate(proposers)
    }
    long["agg"] = [answer_of(smollm2, 2048, 9), "agg#2"]
    backends = {n: ScriptedBackend(n, texts) for n, texts in long.items()}
    fitter = tokenizer_fitter(smollm2, 8192, name="agg-model")
    row = {"id": "r", "turns": ["Compare lists and tuples.", "Now in one sentence."]}
    _, calls = _run(
        m,
        row,
        backends,
        defaults={"max_tokens": 2048},
        record_prompts=True,
        fits={n: fitter for n in [*proposers, "agg"]},
    )
    agg_calls = [c for c in calls if c["model"] == "agg"]
    for turn, (messages, sampling) in enumerate(backends["agg"].received):
        sent = engine_count(smollm2, messages)
        assert sent + sampling["max_tokens"] <= 8192  # fits, counted as the engine counts
        assert json.loads(agg_calls[turn]["prompt"]) == messages  # provenance = what was sent
        context = json.loads(agg_calls[turn]["context"])
        assert context["budget"] == 8192 and context["max_tokens"] == 2048
        assert context["prompt_tokens"] == sent
        cuts = context["cut"]
        assert [(c["what"], c["seat"], c["tokens"]) for c in cuts] == [
            ("proposal", s, fitter.count_tokens(long[f"p{s}"][turn])) for s in range(4)
        ]
        assert max(c["kept"] for c in cuts) - min(c["kept"] for c in cuts) <= 1
        assert messages[0]["content"].count(MARKER) == 4
    # turn 2 carries the aggregator's whole 2048-token answer: a quarter of it (and of the
    # second question and the turn's template tokens) comes off each proposal's share
    first, second = (json.loads(c["context"])["cut"][0]["kept"] for c in agg_calls)
    assert 2048 // 4 <= first - second <= 2048 // 4 + 16
    assert backends["agg"].received[1][0][2] == {"role": "assistant", "content": long["agg"][0]}
    # the proposers' prompts fit as they are: nothing cut, nothing recorded
    assert all(c["context"] is None for c in calls if c["model"] != "agg")


def test_run_row_fails_with_the_step_when_nothing_can_fit():
    from moaa_cluster.moa.budget import ContextFitter, ContextOverflow

    def count(messages):
        return sum(len(m["content"]) for m in messages)

    m = two_layer()
    backends, _ = _backends()
    tiny = ContextFitter(40, count, len, lambda t, n: t[:n], name="agg-model")
    with pytest.raises(
        ContextOverflow,
        match=r"^turn 1, layer 2, seat 0: prompt too long for agg-model \(max_model_len 40\)",
    ):
        _run(m, {"id": "r", "turns": ["q0"]}, backends, fits={"agg": tiny})
    assert len(backends["p1"].received) == 1 and backends["agg"].received == []
