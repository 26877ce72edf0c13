"""Criteria and verdict parsing on real outputs of the packaged judge (SmolLM2-135M).

The fixture holds criteria selections (K.2) and verdicts (K.4) the embedded judge wrote in
an integration run, with the parse each should give: a tiny model's real mess (repeated
filler, emoji floods, lists with continuation lines, verdict-less rambling) rather than
made-up examples. The constrained recovery answers are in it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moaa_cluster.judge.parse import parse_criteria, parse_verdict

FIXTURE = Path(__file__).parents[1] / "fixtures" / "judge_outputs_smollm2.jsonl"
CASES = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kind']}:{c['text'][:30]!r}")
def test_real_output_parses_as_recorded(case):
    if case["kind"] == "criteria":
        got = parse_criteria(case["text"])
        assert (list(got) if got else None) == case["expected"]
    else:
        v = parse_verdict(case["text"])
        assert [v.winner, v.how] == case["expected"]


def test_fixture_covers_both_outcomes():
    crit = [c for c in CASES if c["kind"] == "criteria"]
    assert any(c["expected"] is None for c in crit) and any(c["expected"] for c in crit)
    assert any(c["kind"] == "verdict" and c["expected"][0] is None for c in CASES)
    assert any(c["kind"] == "verdict" and c["expected"][0] in ("A", "B") for c in CASES)
