"""A row whose length check itself fails becomes that row's reject, never a failed run."""

from __future__ import annotations

from moaa_cluster.data.lengths import split_by_length
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.moa import lengths
from moaa_cluster.moa.mixture import Agent, Mixture


def test_a_length_check_that_raises_rejects_only_its_row(monkeypatch):
    rows = [{"id": f"r{i}", "source": "s", "turns": [f"q{i}"], "system": None} for i in range(3)]

    def floor_reason(row, *args):
        if row["id"] == "r1":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return None

    monkeypatch.setattr(lengths, "load_fitters", lambda specs: {"m": object()})
    monkeypatch.setattr(lengths, "floor_reason", floor_reason)
    mix = Mixture(layers=((Agent("m"),), (Agent("m"),)))
    keep, rejects = lengths.length_rejects(rows, mix, {"m": ModelSpec(name="m", path="/x")}, {})
    assert [r["id"] for r in keep] == ["r0", "r2"]
    (reject,) = rejects
    assert reject["where"] == "r1" and reject["stage"] == "input"
    assert reject["reason"].startswith("length check failed: UnicodeEncodeError:")
    assert reject["record"] == {"turns": ["q1"], "system": None}


def test_split_by_length_keeps_order_and_builds_each_tasks_reject():
    rows = [{"id": i} for i in range(4)]

    def reason_for(row):
        if row["id"] == 2:
            raise KeyError("turns")
        return "too long" if row["id"] == 1 else None

    keep, rejects = split_by_length(rows, reason_for, lambda r, why: {"id": r["id"], "why": why})
    assert keep == [{"id": 0}, {"id": 3}]
    assert rejects == [
        {"id": 1, "why": "too long"},
        {"id": 2, "why": "length check failed: KeyError: 'turns'"},
    ]


def test_eval_length_check_that_raises_rejects_only_its_row(monkeypatch):
    from moaa_cluster.evaluation import lengths as eval_lengths
    from moaa_cluster.evaluation.settings import EvalSettings
    from moaa_cluster.judge.judge import JudgeSpec

    def render_question(messages):
        if messages[-1]["content"] == "bad":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return messages[-1]["content"]

    monkeypatch.setattr(eval_lengths, "render_question", render_question)
    rows = [
        {"id": "s/a", "source": "s", "source_id": "1", "system": None, "turns": ["q"]},
        {"id": "s/b", "source": "s", "source_id": None, "system": None, "turns": ("bad",)},
    ]
    model = ModelSpec(name="m", backend="openai")  # no local tokenizer: nothing to count
    judge = JudgeSpec(name="j", proposers=("m",), aggregator="m")
    keep, rejects = eval_lengths.length_rejects(
        rows, model, None, judge, {"m": model}, EvalSettings()
    )
    assert [r["id"] for r in keep] == ["s/a"]
    (reject,) = rejects
    assert reject["where"] == "s/b" and reject["stage"] == "input"  # no source id: the row id
    assert reject["reason"].startswith("length check failed: UnicodeEncodeError:")
    assert reject["record"] == {"turns": ["bad"]}
