"""A row whose length check itself fails becomes that row's reject, never a failed run."""

from __future__ import annotations

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.moa.mixture import Agent, Mixture
from moaa_cluster.pipeline import synth


def test_a_length_check_that_raises_rejects_only_its_row(monkeypatch):
    rows = [{"id": f"r{i}", "source": "s", "turns": [f"q{i}"], "system": None} for i in range(3)]

    def floor_reason(row, *args):
        if row["id"] == "r1":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return None

    monkeypatch.setattr("moaa_cluster.moa.budget.load_fitters", lambda specs: {"m": object()})
    monkeypatch.setattr(synth, "_floor_reason", floor_reason)
    mix = Mixture(layers=((Agent("m"),), (Agent("m"),)))
    keep, rejects = synth.length_rejects(rows, mix, {"m": ModelSpec(name="m", path="/x")}, {})
    assert [r["id"] for r in keep] == ["r0", "r2"]
    (reject,) = rejects
    assert reject["where"] == "r1" and reject["stage"] == "input"
    assert reject["reason"].startswith("length check failed: UnicodeEncodeError:")
