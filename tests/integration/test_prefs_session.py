"""Real-stack stage 2 on the session's Ray cluster: candidates, MoA judge, DPO pairs.

The prefs and judge-eval runs keep their run directories on the session's S3-compatible
server (moto): the workers' shards, the outputs and the manifest go through object storage."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED

HH = SHARED / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"


@pytest.fixture(scope="session")
def run_prefs(compose, models_dir, ray_session):
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.pipeline.prefs import SAMPLER, make_preferences
    from moaa_cluster.runs.options import RunOptions

    def _run(run_dir: Path | str, overrides: list[str], sample_only: bool = False) -> dict:
        cfg = compose(
            "sample" if sample_only else "prefs", [f"models_dir={models_dir}", *overrides]
        )
        judge, specs = (None, {}) if sample_only else build.judge(cfg.judge)
        specs[SAMPLER] = build.model_specs({SAMPLER: cfg.sampler})[SAMPLER]
        opts = RunOptions(
            run_dir,
            OmegaConf.to_container(cfg.cluster, resolve=True),
            limit=cfg.limit,
            progress=False,
            keep_engines=True,
        )
        return make_preferences(
            build.sources(cfg.dataset), judge, specs, build.prefs_settings(cfg), opts
        )

    return _run


@pytest.fixture(scope="module")
def prefs_run(run_prefs, s3):
    run_dir = s3.uri("prefs_run")
    manifest = run_prefs(
        run_dir,
        [
            "limit=3",
            "num_candidates=3",
            "sampling.max_tokens=64",
            "judge.sampling.max_tokens=96",
            "judge.verdict_sampling.max_tokens=128",
            # at 64 tokens most candidates are cut off: judge them all (the default rule,
            # never choosing a cut-off answer, is tested in the unit and rehearsal tests)
            "truncated=allow",
        ],
    )
    return run_dir, manifest


def test_prefs_writes_trl_pairs_with_provenance(prefs_run, s3):
    run_dir, manifest = prefs_run
    saved = json.loads(s3.read(f"{run_dir}/manifest.json"))
    assert saved == json.loads(json.dumps(manifest, default=str))  # tuples are lists in JSON
    c = manifest["counts"]
    assert c["rows_failed"] == 0
    skips = ("identical", "no_preference", "all_truncated", "truncated_preferred")
    skipped = sum(c[f"skipped_{k}"] for k in skips)
    assert c["pairs"] + skipped == 3  # every instruction is a pair or a reject with its reason
    rejects = [json.loads(x) for x in s3.read(f"{run_dir}/rejects.jsonl").splitlines() if x]
    assert len(rejects) == skipped
    rows = pq.read_table(s3.key(f"{run_dir}/prefs.parquet"), filesystem=s3.fs).to_pylist()
    assert len(rows) == c["pairs"]
    # all-truncated sets are not judged: none of their candidates could be chosen
    judged = c["pairs"] + c["skipped_no_preference"] + c["skipped_truncated_preferred"]
    assert c["judge"]["comparisons"] == judged * 3 * 2  # all 3 pairs of 3, both orders
    # per pair: criteria (K.2) once for both orders; per order: 2 critiques (K.3), 1 verdict
    # (K.4) [+ 1 recovery]
    assert c["judge"]["calls"] == judged * (3 + 6 * 3) + c["judge"]["verdict_unparsed"]
    # every cut-off candidate is flagged from its finish reason, and counted
    assert c["candidates_truncated"] >= sum(sum(r["candidate_truncated"]) for r in rows)
    for r in rows:
        assert r["candidate_truncated"] == [f == "length" for f in r["candidate_finish_reasons"]]
    for r in rows:
        assert r["prompt"][-1]["role"] == "user"
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert r["chosen_index"] != r["rejected_index"]
        assert r["chosen"][0]["content"] == r["candidates"][r["chosen_index"]]
        assert r["scores"][r["chosen_index"]] > r["scores"][r["rejected_index"]]
        detail = json.loads(r["judge"])
        assert len(detail["comparisons"]) == 6
        by_pair: dict = {}
        for cmp in detail["comparisons"]:
            by_pair.setdefault(frozenset((cmp["a"], cmp["b"])), []).append(cmp["criteria"])
        # both orders of a pair judge by the same criteria, chosen once
        assert all(len(v) == 2 and v[0] == v[1] for v in by_pair.values())
        for cmp in detail["comparisons"]:
            assert len(cmp["criteria"]) == 3
            assert len(cmp["critiques"]) == 2
            assert cmp["winner"] in ("A", "B", None)
            if cmp["winner"] is None:
                assert cmp["parse"] in ("none", "both")  # counted, never a silent default


def test_judge_eval_on_hh_rlhf_prints_table(compose, models_dir, ray_session, s3, capsys):
    if not HH.exists():
        pytest.skip(f"{HH} not available")
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.pipeline.judge_eval import evaluate_judges
    from moaa_cluster.runs.options import RunOptions

    cfg = compose(
        "judge_eval",
        [
            f"models_dir={models_dir}",
            f"pairs={HH}",
            "judge.sampling.max_tokens=64",
            "judge.verdict_sampling.max_tokens=96",
        ],
    )
    judge, specs = build.judge(cfg.judge)
    judges = [judge, *(judge.single(m) for m in judge.models)]
    run_dir = s3.uri("judge_eval")
    opts = RunOptions(
        run_dir,
        OmegaConf.to_container(cfg.cluster, resolve=True),
        limit=2,
        progress=False,
        keep_engines=True,
    )
    table = evaluate_judges(HH, judges, specs, opts)
    out = capsys.readouterr().out
    assert [r["judge"] for r in table] == [
        "embedded",
        "single:smollm2_135m_instruct",
        "single:gemma_3_270m",
    ]
    for row in table:
        assert row["pairs"] == 2
        assert abs(row["accuracy"] + row["wrong"] + row["ties"] - 1.0) < 1e-9
        assert 0.0 <= row["parse_fail_after"] <= row["parse_fail_before"] <= 1.0
        assert row["calls"] >= 2 * 2 * 3 and row["completion_tokens"] > 0
        assert row["judge"] in out
    assert s3.read(f"{run_dir}/judge_eval.md").startswith(b"| judge |")
    saved = json.loads(s3.read(f"{run_dir}/judge_eval.json"))
    assert [r["judge"] for r in saved["table"]] == [r["judge"] for r in table]


def test_sample_writes_distinct_seeded_candidates(run_prefs, tmp_path):
    """`moaa sample`: N candidates per prompt at T=0.8, one seed each; rerun repeats them."""
    manifest = run_prefs(tmp_path, ["limit=2", "num_candidates=3", "sampling.max_tokens=48"], True)
    assert manifest["task"] == "sample"
    assert manifest["counts"]["candidate_sets"] + manifest["counts"]["skipped_identical"] == 2
    rows = pq.read_table(tmp_path / "candidates.parquet").to_pylist()
    for r in rows:
        assert len(r["candidates"]) == 3 and len(set(r["candidates"])) > 1
        assert all(t > 0 for t in r["candidate_tokens"])
    again = run_prefs(
        tmp_path / "again", ["limit=2", "num_candidates=3", "sampling.max_tokens=48"], True
    )
    assert again["counts"]["candidate_sets"] == manifest["counts"]["candidate_sets"]
    rows2 = pq.read_table(tmp_path / "again" / "candidates.parquet").to_pylist()
    # Seeded: the same seed per candidate gives the same text, but vLLM on CPU computes in bf16
    # and a batch's composition moves the logits a little, so a long sample can fork mid-way
    # (CI saw 5 of 6 identical, the sixth forked after 20 words). Unseeded T=0.8 samples of 48
    # tokens are never identical, so most of them matching still proves the seeds are used.
    first = [c for r in rows for c in r["candidates"]]
    second = [c for r in rows2 for c in r["candidates"]]
    same = sum(a == b for a, b in zip(first, second, strict=True))
    assert same * 2 >= len(first), (first, second)
