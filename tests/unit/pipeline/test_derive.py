"""Ablation datasets derived from a synth run's provenance (``moaa_cluster.pipeline.derive``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.pipeline.derive import derive, main

PROPOSERS = ("prop-a", "prop-b")
AGG = "agg-model"


def _calls(n_turns: int, tag: str) -> list[dict]:
    """Provenance as synth writes it: per turn, 2 proposer seats in layer 0, aggregator in 1."""
    calls = []
    for turn in range(n_turns):
        for seat, model in enumerate(PROPOSERS):
            calls.append(
                {
                    "turn": turn,
                    "layer": 0,
                    "seat": seat,
                    "model": model,
                    "text": f"{tag}:{model}:t{turn}",
                }
            )
        calls.append(
            {"turn": turn, "layer": 1, "seat": 0, "model": AGG, "text": f"{tag}:{AGG}:t{turn}"}
        )
    return calls


def single_turn_row(rid: str = "r1") -> dict:
    return {
        "id": rid,
        "source": "demo",
        "messages": [
            {"role": "user", "content": f"{rid} q0"},
            {"role": "assistant", "content": f"{rid}:{AGG}:t0"},
        ],
        "calls": _calls(1, rid),
    }


def two_turn_row(rid: str = "r2") -> dict:
    return {
        "id": rid,
        "source": "mt",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"{rid} q0"},
            {"role": "assistant", "content": f"{rid}:{AGG}:t0"},
            {"role": "user", "content": f"{rid} q1"},
            {"role": "assistant", "content": f"{rid}:{AGG}:t1"},
        ],
        "calls": _calls(2, rid),
    }


def rows() -> list[dict]:
    return [single_turn_row(), two_turn_row()]


def test_single_uses_the_teachers_answers_per_turn():
    out = derive(rows(), "single", model="prop-b")
    assert [r["id"] for r in out] == ["r1", "r2"]
    assert [r["source"] for r in out] == ["demo", "mt"]
    assert {r["teacher"] for r in out} == {"prop-b"}
    assert out[0]["messages"] == [
        {"role": "user", "content": "r1 q0"},
        {"role": "assistant", "content": "r1:prop-b:t0"},
    ]
    assert out[1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "r2 q0"},
        {"role": "assistant", "content": "r2:prop-b:t0"},
        {"role": "user", "content": "r2 q1"},
        {"role": "assistant", "content": "r2:prop-b:t1"},
    ]


def test_single_calls_out_of_order_still_match_turns():
    row = two_turn_row()
    row["calls"] = list(reversed(row["calls"]))
    out = derive([row], "single", model="prop-a")
    answers = [m["content"] for m in out[0]["messages"] if m["role"] == "assistant"]
    assert answers == ["r2:prop-a:t0", "r2:prop-a:t1"]


@pytest.mark.parametrize("model", ["nope", AGG, None])
def test_single_unknown_model(model):
    # the aggregator is not a layer-0 seat, so it is no single teacher either
    with pytest.raises(ValueError, match="not a layer-0 seat"):
        derive(rows(), "single", model=model)


def test_single_on_the_aggregator_layer():
    out = derive(rows(), "single", model=AGG, layer=1)
    answers = [m["content"] for m in out[1]["messages"] if m["role"] == "assistant"]
    assert answers == ["r2:agg-model:t0", "r2:agg-model:t1"]


def test_combined_has_one_row_per_proposer():
    out = derive(rows(), "combined")
    assert len(out) == 2 * len(PROPOSERS)
    assert [r["id"] for r in out] == ["r1:prop-a", "r1:prop-b", "r2:prop-a", "r2:prop-b"]
    assert [r["teacher"] for r in out] == ["prop-a", "prop-b", "prop-a", "prop-b"]
    assert len({r["id"] for r in out}) == len(out)
    for r in out:
        answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        assert all(a.startswith(f"{r['id'].split(':')[0]}:{r['teacher']}:") for a in answers)
    assert out[2]["messages"][0] == {"role": "system", "content": "You are terse."}


def test_combined_same_model_in_two_seats_keeps_both():
    row = single_turn_row()
    row["calls"][1]["model"] = "prop-a"  # seat 1 runs the same model as seat 0
    out = derive([row], "combined")
    assert [r["teacher"] for r in out] == ["prop-a", "prop-a#1"]
    assert len({r["id"] for r in out}) == 2


def _many(n: int = 40) -> list[dict]:
    return [single_turn_row(f"r{i}") if i % 2 else two_turn_row(f"r{i}") for i in range(n)]


def test_random_is_seeded_and_picks_only_proposers():
    data = _many()
    a = derive(data, "random", seed=3)
    b = derive(data, "random", seed=3)
    assert a == b
    assert len(a) == len(data)
    assert [r["id"] for r in a] == [r["id"] for r in data], "ids are not suffixed"
    teachers = [r["teacher"] for r in a]
    assert set(teachers) == set(PROPOSERS), "every proposer is picked sometimes, nothing else"
    for r in a:
        answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        assert all(f":{r['teacher']}:" in x for x in answers), "one teacher for all turns"
    c = derive(data, "random", seed=4)
    assert [r["teacher"] for r in c] != teachers, "another seed, another draw"


def test_system_message_kept_for_every_kind():
    row = two_turn_row()
    for kind, kw in (("single", {"model": "prop-a"}), ("combined", {}), ("random", {})):
        for r in derive([row], kind, **kw):
            assert r["messages"][0] == {"role": "system", "content": "You are terse."}
            assert [m["role"] for m in r["messages"]] == [
                "system",
                "user",
                "assistant",
                "user",
                "assistant",
            ]


def test_no_system_message_when_row_has_none():
    (r,) = derive([single_turn_row()], "single", model="prop-a")
    assert [m["role"] for m in r["messages"]] == ["user", "assistant"]


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        derive(rows(), "best")


def test_main_writes_parquet(tmp_path, capsys):
    pq.write_table(pa.Table.from_pylist(rows()), tmp_path / "sft.parquet")
    assert main([str(tmp_path), "combined"]) == 0
    out = pq.read_table(tmp_path / "ablations" / "combined.parquet").to_pylist()
    assert [r["id"] for r in out] == ["r1:prop-a", "r1:prop-b", "r2:prop-a", "r2:prop-b"]
    assert main([str(tmp_path), "single", "--model", "prop-a"]) == 0
    assert (tmp_path / "ablations" / "single-prop-a.parquet").exists()
    assert main([str(tmp_path), "random", "--seed", "5"]) == 0
    assert (tmp_path / "ablations" / "random-seed5.parquet").exists()
    assert "rows ->" in capsys.readouterr().out
