"""The benchmarks' pure parts: schedules (against a fake engine), counting, fits, plan replay."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks import harness, judge_plans, synth_modes
from moaa_cluster.engines.backends import Completion
from moaa_cluster.judge.ranking import make_plan
from moaa_cluster.moa.mixture import Agent, Mixture

MIX = Mixture(layers=((Agent("p1"), Agent("p2")), (Agent("p1", {"temperature": 0.5}),)))
ROWS = [{"id": f"r{k}", "turns": [f"question {k}"], "system": None} for k in range(6)]


class FakeEngine:
    """Answers after a delay that depends on the row; logs start/end events and concurrency."""

    def __init__(self, name: str, events: list, state: dict, delays: dict | None = None):
        self.name, self.events, self.state, self.delays = name, events, state, delays or {}

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        text = messages[-1]["content"]
        agg = messages[0]["role"] == "system"
        self.state["now"] += 1
        self.state["peak"] = max(self.state["peak"], self.state["now"])
        self.events.append(("start", self.name, agg, text))
        await asyncio.sleep(self.delays.get(text, 0.001))
        self.state["now"] -= 1
        self.events.append(("end", self.name, agg, text))
        n = sampling.get("min_tokens") or 3
        return Completion(f"{self.name}:{text}:{sampling['seed']}", 10, n, "stop", self.name)


def engines(delays=None):
    events: list = []
    state = {"now": 0, "peak": 0}
    return {k: FakeEngine(k, events, state, delays) for k in ("p1", "p2")}, events, state


SAMPLING = harness.mixture_sampling({"max_tokens": 8, "temperature": 0.7}, 0)


def test_every_schedule_sends_the_same_calls():
    seen = {}
    for name, fn in (
        ("barrier", harness.layer_barrier),
        ("streaming", harness.row_streaming),
        ("original", harness.original_shape),
    ):
        backends, _, _ = engines()
        calls = asyncio.run(fn(ROWS, MIX, backends, SAMPLING))
        assert len(calls) == len(ROWS) * 3
        seen[name] = {(c["row"], c["layer"], c["seat"]): (c["text"], c["messages"]) for c in calls}
        ok, total = harness.aggregator_prompts_complete(calls, MIX)
        assert (ok, total) == (len(ROWS), len(ROWS))
    assert seen["barrier"] == seen["streaming"] == seen["original"]


def test_barrier_starts_no_aggregator_before_every_proposer_is_back():
    backends, events, _ = engines(delays={"question 0": 0.05})
    asyncio.run(harness.layer_barrier(ROWS, MIX, backends, SAMPLING))
    first_agg = next(k for k, e in enumerate(events) if e[0] == "start" and e[2])
    last_proposer_end = max(k for k, e in enumerate(events) if e[0] == "end" and not e[2])
    assert first_agg > last_proposer_end


def test_streaming_aggregates_a_row_while_another_row_is_still_proposing():
    backends, events, _ = engines(delays={"question 0": 0.05})
    asyncio.run(harness.row_streaming(ROWS, MIX, backends, SAMPLING))
    first_agg = next(k for k, e in enumerate(events) if e[0] == "start" and e[2])
    last_proposer_end = max(k for k, e in enumerate(events) if e[0] == "end" and not e[2])
    assert first_agg < last_proposer_end


def test_original_shape_caps_rows_in_flight_and_runs_proposers_in_turn():
    backends, events, state = engines()
    asyncio.run(harness.original_shape(ROWS, MIX, backends, SAMPLING, procs=2))
    assert state["peak"] == 2  # two shards, one call at a time each
    starts = [e for e in events if e[0] == "start"]
    assert [e[1] for e in starts[:2]] == ["p1", "p1"]  # each shard begins with its row's p1


def test_floor_replays_calls_at_once_with_their_lengths():
    backends, _, state = engines()
    calls = asyncio.run(harness.row_streaming(ROWS, MIX, backends, SAMPLING))
    for k, c in enumerate(calls):
        c["completion_tokens"] = k % 5  # 0 is asked as 1: an engine needs max_tokens >= 1
    state["peak"] = 0
    replayed = asyncio.run(harness.floor(calls, MIX, backends, SAMPLING))
    assert state["peak"] == len(calls)
    assert [r["asked_tokens"] for r in replayed] == [max(1, k % 5) for k in range(len(calls))]
    assert [r["completion_tokens"] for r in replayed] == [r["asked_tokens"] for r in replayed]
    assert [r["messages"] for r in replayed] == [c["messages"] for c in calls]


def test_schedules_refuse_multi_turn_rows():
    backends, _, _ = engines()
    with pytest.raises(ValueError, match="single-turn"):
        asyncio.run(
            harness.row_streaming([{**ROWS[0], "turns": ["a", "b"]}], MIX, backends, SAMPLING)
        )


def test_contiguous_shards_match_datasets_split():
    shards = harness.contiguous_shards(list(range(10)), 4)
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert harness.contiguous_shards([1, 2], 16) == [[1], [2]]


def test_tally_and_same_text():
    calls = [
        {"row": "a", "layer": 0, "seat": 0, "model": "m", "text": "x", "prompt_tokens": 3,
         "completion_tokens": 2, "finish_reason": "stop"},
        {"row": "a", "layer": 1, "seat": 0, "model": "n", "text": "y", "prompt_tokens": 5,
         "completion_tokens": 4, "finish_reason": "length"},
    ]  # fmt: skip
    t = harness.tally(calls)
    assert (t["calls"], t["prompt_tokens"], t["completion_tokens"]) == (2, 8, 6)
    assert t["per_model"]["n"] == {"calls": 1, "prompt_tokens": 5, "completion_tokens": 4}
    assert harness.same_text_fraction(calls, [{**calls[0]}, {**calls[1], "text": "z"}]) == 0.5


def test_parse_metrics_sums_labels_and_skips_comments():
    text = (
        "# HELP vllm:prompt_tokens_total x\n"
        'vllm:prompt_tokens_total{model_name="a"} 120.0\n'
        'vllm:generation_tokens_total{model_name="a"} 30.0\n'
        'vllm:request_success_total{finished_reason="stop",model_name="a"} 2.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="a"} 3.0\n'
        'vllm:prompt_tokens_cached_total{model_name="a"} 99.0\n'
    )
    assert harness.parse_metrics(text) == {
        "prompt_tokens": 120.0,
        "completion_tokens": 30.0,
        "requests": 5.0,
    }


def test_linear_fit_and_lengths():
    fit = harness.linear_fit([50, 100, 200], [30.0, 55.0, 105.0])
    assert fit["slope"] == pytest.approx(0.5) and fit["intercept"] == pytest.approx(5.0)
    assert fit["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        harness.linear_fit([1, 1], [2.0, 3.0])
    lens = harness.log_uniform_lengths([f"k{i}" for i in range(200)], 8, 192, seed=0)
    assert lens == harness.log_uniform_lengths([f"k{i}" for i in range(200)], 8, 192, seed=0)
    assert min(lens.values()) >= 8 and max(lens.values()) <= 192
    assert min(lens.values()) < 16 and max(lens.values()) > 128  # spread wide


def test_server_command_carries_engine_settings():
    from moaa_cluster.engines.spec import ModelSpec

    spec = ModelSpec(
        name="smol",
        path="/m/smol",
        engine_kwargs={
            "enforce_eager": True,
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": 4096,
        },
    )
    cmd = harness.server_command(spec, 8123)
    assert cmd[cmd.index("--served-model-name") + 1] == "smol"
    assert "--enforce-eager" in cmd and "--no-enable-chunked-prefill" in cmd
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "4096"


def test_ratios():
    r = synth_modes.ratios(
        {"pipeline": 60.0, "barrier": 50.0, "streaming": 40.0, "original": 120.0, "floor": 30.0}
    )
    assert r == {"a/min(b,c)": 1.5, "d/a": 2.0, "a/e": 2.0}
    assert synth_modes.ratios({"barrier": 1.0}) == {}


def _prefs_run(tmp_path, outcomes_by_item: list[dict], plan="round_robin"):
    """A prefs run directory holding only prefs.parquet (rows with a pair)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "manifest.json").write_text(json.dumps({"judge": {"plan": plan}}))
    rows = []
    for k, outcomes in enumerate(outcomes_by_item):
        n = 4
        pairs = [{"i": i, "j": j, "outcome": str(outcomes[(i, j)])} for (i, j) in outcomes]
        comps = [
            {"a": a, "b": b, "calls": 4, "prompt_tokens": 100, "completion_tokens": 10}
            for (i, j) in outcomes
            for a, b in ((i, j), (j, i))
        ]
        rr = make_plan("round_robin", n)
        from moaa_cluster.judge.ranking import PairResult

        rr.record([PairResult(i, j, o) for (i, j), o in outcomes.items()])
        chosen, rejected = rr.result()
        rows.append(
            {
                "id": f"item{k}",
                "candidates": [f"c{i}" for i in range(n)],
                "judge": json.dumps({"pairs": pairs, "comparisons": comps}),
                "chosen_index": chosen,
                "rejected_index": rejected,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    return tmp_path


def test_judge_plans_replay_counts_calls_and_agreement(tmp_path):
    # item 0: a strict order 0 > 1 > 2 > 3: every plan finds (0, 3)
    strict = {(i, j): i for i in range(4) for j in range(i + 1, 4)}
    # item 1: 3 beats everyone, 0 > 1 > 2 otherwise: round robin (3, 2); the knockout's
    # round 1 sends 3 to the winners and 2 to the losers bracket, so it agrees too
    top3 = {(i, j): (3 if j == 3 else i) for i in range(4) for j in range(i + 1, 4)}
    # item 2: scores 0:2 1:2 2:1 3:1, so round robin picks (0, 3) by its tie-breaks; the
    # knockout's losers bracket (1 vs 2) ends on 2: it agrees on chosen, not on rejected
    mixed = {(0, 1): 0, (0, 2): 2, (0, 3): 0, (1, 2): 1, (1, 3): 1, (2, 3): 3}
    run = _prefs_run(tmp_path, [strict, top3, mixed])
    items, notes = judge_plans.load_items(run)
    assert len(items) == 3 and "prefs.parquet" in notes["read_from"]
    out = judge_plans.evaluate(items, ["round_robin", "knockout"])
    assert out["round_robin_replay_matches_run"] == "3/3"
    assert out["pair_outcomes"] == {"win": 18, "tie": 0, "unresolved": 0}
    assert out["agreement_by_chance"] == {"chosen": 0.25, "both": 0.083}
    rr, ko = out["plans"]["round_robin"], out["plans"]["knockout"]
    assert rr["comparisons_per_item"] == 6 and rr["calls_per_item"] == 6 * 2 * 4
    assert ko["comparisons_per_item"] == 4 and ko["calls_per_item"] == 4 * 2 * 4
    assert ko["rounds_per_item"] == 2 and rr["rounds_per_item"] == 1
    assert rr["agreement_with_round_robin"] == {"chosen": 1.0, "rejected": 1.0, "both": 1.0}
    assert ko["agreement_with_round_robin"] == {"chosen": 1.0, "rejected": 0.667, "both": 0.667}
    assert "round_robin" in judge_plans.summary_line(out)


def test_judge_plans_refuses_other_plans(tmp_path):
    run = _prefs_run(tmp_path, [], plan="knockout")
    with pytest.raises(ValueError, match="round_robin"):
        judge_plans.load_items(run)
    with pytest.raises(FileNotFoundError):
        judge_plans.load_items(tmp_path / "nowhere")


def test_spread_sends_calls_to_each_client_in_turn():
    backends, events, _ = engines()
    spread = harness.Spread([backends["p1"], backends["p2"]])
    for k in range(4):
        asyncio.run(spread.chat([{"role": "user", "content": f"q{k}"}], {"seed": k}))
    assert [e[1] for e in events if e[0] == "start"] == ["p1", "p2", "p1", "p2"]


def test_pipeline_tuning_variants_parse_and_refuse_bad_ones():
    from benchmarks.pipeline_tuning import parse_variants

    assert parse_variants("4x8, 2x32/4") == [(4, 8, None), (2, 32, 4)]
    for bad in ("4", "x8", "0x8", "4x", "four x 8", "", "2x32/", "2x32/0"):
        with pytest.raises(ValueError):
            parse_variants(bad)
