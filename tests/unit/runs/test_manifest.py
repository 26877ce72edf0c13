"""The one manifest type: status from counts, old manifests read as new, empty runs named."""

import json

import pytest

from moaa_cluster.runs.manifest import Manifest, nothing_produced, status_of


def _m(task, **counts):
    return Manifest(task=task, counts=counts, versions={})


def test_status_is_derived_from_the_counts():
    assert status_of("synth", {"rows_ok": 3, "rows_failed": 0}) == "complete"
    assert status_of("synth", {"rows_ok": 3, "rows_failed": 1}) == "incomplete"
    assert status_of("synth", {"rows_ok": 0, "rejects_input": 3}) == "empty"
    assert status_of("prefs", {"pairs": 0, "rows_failed": 0}) == "empty"
    assert status_of("eval", {"evaluated": 2}) == "complete"
    assert status_of("train-sft", {}) == "complete"  # a trainer says so itself


def test_an_explicit_status_must_be_known():
    assert Manifest(task="train-sft", status="complete", versions={}).complete
    with pytest.raises(ValueError, match="status"):
        Manifest(task="synth", status="done", versions={})


def test_saved_manifest_reads_back_with_the_task_fields_at_top_level(tmp_path):
    m = Manifest(
        task="synth",
        counts={"rows_ok": 1},
        timings_s={"total": 1.23456, "note": "x"},
        details={"mixture": {"layers": []}},
        versions={"ray": "1"},
    )
    data = m.save(tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == data
    assert on_disk["status"] == "complete" and on_disk["mixture"] == {"layers": []}
    assert on_disk["timings_s"] == {"total": 1.23, "note": "x"}
    back = Manifest.load(tmp_path)
    assert back.details == {"mixture": {"layers": []}} and back.counts == {"rows_ok": 1}


def test_manifests_from_before_the_layout_still_read(tmp_path):
    """synth/prefs/judge-eval wrote no status and judge-eval was `judge_eval`: both derived."""
    old = {"task": "judge_eval", "counts": {"judged": 2, "rows_failed": 0}, "metrics": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    m = Manifest.load(tmp_path)
    assert (m.task, m.status, m.details) == ("judge-eval", "complete", {"metrics": {}})
    (tmp_path / "manifest.json").write_text(
        json.dumps({"task": "synth", "counts": {"rows_ok": 2, "rows_failed": 1}})
    )
    assert Manifest.load(tmp_path).status == "incomplete"
    (tmp_path / "manifest.json").write_text("{not json")
    assert Manifest.load(tmp_path) is None
    assert Manifest.load(tmp_path / "absent") is None


def test_nothing_produced_names_the_counts():
    synth = _m("synth", rows_ok=0, rejects_input=3, rows_failed=0)
    assert nothing_produced(synth).startswith("no SFT rows produced: 3 rows rejected on input")
    assert nothing_produced(_m("synth", rows_ok=2)) is None
    assert "preference pairs" in nothing_produced(_m("prefs", pairs=0))
    assert "candidate sets" in nothing_produced(_m("sample", candidate_sets=0))
    assert nothing_produced(_m("eval", evaluated=0, rejects=1))
    assert "judged pairs" in nothing_produced(_m("judge-eval", judged=0))
    assert nothing_produced(Manifest(task="train-sft", status="complete", versions={})) is None
    assert nothing_produced(None) is None
