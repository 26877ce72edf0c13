"""The paper's configs at their real shape on this machine: stage 1, stage 2, self-improvement.

Each test runs the task the way `moaa <task> ... rehearsal=true` does (the same CLI wrapper,
in this process so the session's Ray cluster and the rehearsal engine are shared), then
checks what a cluster run would produce: the configured model names and layers, prompts that
fit each model's configured context, no row lost, the files a real run writes, and the
rehearsal said in the manifest and the report. Tests run in file order; the pipeline test
comes last because it stops the engines it used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from moaa_cluster import cli
from moaa_cluster.cli import tasks

STAGE1 = {
    "WizardLM-2-8x22B",
    "Qwen2-72B-Instruct",
    "gemma-2-27b-it",
    "Llama-3.1-70B-Instruct",
    "Qwen1.5-110B-Chat",
}
STAGE2_JUDGES = {"gemma-2-27b-it", "Llama-3.1-70B-Instruct", "Qwen2-72B-Instruct"}


def run(task: str, config: str, fn, compose, overrides: list[str]) -> None:
    """``moaa <task> <overrides> rehearsal=true``, through the CLI's own wrapper."""
    cfg = compose(config, [*overrides, "rehearsal=true", "progress=false"])
    cli._guarded(task, fn)(cfg)


def read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_paper_stage1_rehearsal(compose, models_dir, ray_session, mt_bench_rows, tmp_path):
    run(
        "synth",
        "synth",
        tasks.synth_task,
        compose,
        [
            f"models_dir={models_dir}",
            "mixture=paper_stage1",
            "cluster=slurm_a100",
            "dataset=mt_bench",
            f"dataset.sources.mt_bench.path={mt_bench_rows}",
            f"output_root={tmp_path}",
            "keep_engines=true",
            "record_prompts=true",
            "truncated=keep",  # both rows in sft.parquet, whatever the stand-in's length
        ],
    )
    run_dir = tmp_path / "synth-paper_stage1-mt_bench-rehearsal"
    manifest = read_manifest(run_dir)
    assert manifest["rehearsal"]["engine"] == "rehearsal-smollm2-135m-instruct"
    assert {m["name"] for m in manifest["rehearsal"]["models"].values()} == STAGE1
    assert manifest["rehearsal"]["cluster_configured"]["accelerator_type"] == "A100-80G"
    counts = manifest["counts"]
    # a cluster run would reject none of these rows: nothing here may either
    assert (counts["rows_ok"], counts["rows_failed"], counts["rejects_input"]) == (2, 0, 0)
    assert (run_dir / "rejects.jsonl").read_text() == ""
    rows = {len(r["calls"]): r for r in pq.read_table(run_dir / "sft.parquet").to_pylist()}
    assert sorted(rows) == [5, 10]  # one turn, two turns: 4 proposers + the aggregator each
    for row in rows.values():
        for call in row["calls"]:
            assert call["completion_tokens"] <= 2048  # the paper's answer length, unscaled
            # the engine's own prompt count: every call fit its model's configured context
            assert call["prompt_tokens"] + 2048 <= 8192, call
        aggs = [c for c in row["calls"] if c["layer"] == 1]
        assert {c["model"] for c in aggs} == {"Qwen1.5-110B-Chat"}
        assert {c["model"] for c in row["calls"] if c["layer"] == 0} == STAGE1 - {
            "Qwen1.5-110B-Chat"
        }
        for agg in aggs:
            system = json.loads(agg["prompt"])[0]
            assert system["role"] == "system"
            assert system["content"].startswith("You have been provided with a set of responses")
    # a shortened prompt is recorded per call and counted in the manifest
    cut = [c for r in rows.values() for c in r["calls"] if c["context"]]
    assert counts.get("calls_with_cut_context", 0) == len(cut)
    for call in cut:
        record = json.loads(call["context"])
        assert record["budget"] == 8192 and record["cut"]
    # turn 2's aggregator sees turn 1's aggregated answer as history
    two = rows[10]
    turn2_agg = next(c for c in two["calls"] if c["turn"] == 1 and c["layer"] == 1)
    turn1_answer = next(c for c in two["calls"] if c["turn"] == 0 and c["layer"] == 1)["text"]
    assert turn1_answer in [m["content"] for m in json.loads(turn2_agg["prompt"])]


def test_paper_stage2_prefs_rehearsal(compose, models_dir, ray_session, mt_bench_rows, tmp_path):
    # answers scaled to 1/8 (candidates 256, critiques and verdicts 128 tokens): the 90 judge
    # calls of one instruction at full length would take ~15 min on 2 cores
    run_dir = tmp_path / "prefs-paper_stage2-mt_bench-rehearsal"
    try:
        run(
            "prefs",
            "prefs",
            tasks.prefs_task,
            compose,
            [
                f"models_dir={models_dir}",
                "judge=paper_stage2",
                "cluster=slurm_a100",
                "dataset=mt_bench",
                f"dataset.sources.mt_bench.path={mt_bench_rows}",
                "limit=1",
                "rehearsal_scale=0.125",
                # SmolLM2's candidates run past 256 tokens nearly always (5 of 5 when measured):
                # with the default rule nothing could be chosen, which a real SFT model's 2,048
                # tokens would not cause. Judge them all; the rule has its own tests.
                "truncated=allow",
                f"output_root={tmp_path}",
                "keep_engines=true",
            ],
        )
    except SystemExit as exc:
        # the stand-in judge often ties every pair: then the run has no pair, records the
        # instruction with its reason and exits 1 with one line saying why (a real judge
        # of 70B models would prefer one); everything below still holds
        assert exc.code == 1
        assert read_manifest(run_dir)["counts"]["pairs"] == 0
    manifest = read_manifest(run_dir)
    rec = manifest["rehearsal"]
    assert {m["name"] for m in rec["models"].values()} == STAGE2_JUDGES | {"smollm2-135m-instruct"}
    assert rec["max_tokens_scale"] == 0.125
    c = manifest["counts"]
    assert (c["rows_failed"], c["rejects_input"]) == (0, 0)
    skips = ("identical", "no_preference", "all_truncated", "truncated_preferred")
    assert c["pairs"] + sum(c[f"skipped_{k}"] for k in skips) == 1
    assert c["candidates"] == 5
    shard = [
        r
        for f in sorted((run_dir / "shards").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    (row,) = shard
    assert all(n <= 256 for n in row["candidate_tokens"])
    assert row["candidate_truncated"] == [f == "length" for f in row["candidate_finish_reasons"]]
    detail = json.loads(row["judge"])
    cmps = detail["comparisons"]
    assert len(cmps) == 20  # the paper's plan: all 10 pairs of 5, both orders
    assert sum(x["criteria_call"] for x in cmps) == 10  # K.2 once per pair
    for x in cmps:
        assert [k["model"] for k in x["critiques"]] == [
            "gemma-2-27b-it",
            "Llama-3.1-70B-Instruct",
            "Qwen2-72B-Instruct",
        ]
        assert x["winner"] in ("A", "B", None)
    assert c["judge"]["calls"] == 10 + 20 * 4 + c["judge"]["verdict_unparsed"]


def test_self_improvement_pipeline_rehearsal(
    compose, models_dir, ray_session, mt_bench_rows, tmp_path
):
    # Table 4 end to end: small-scale mixture -> SFT with the paper's Gemma recipe -> eval of
    # the SFT model against the base, judged by the stage-2 models. Answers scaled to 1/4.
    run(
        "pipeline",
        "pipeline",
        tasks.pipeline_task,
        compose,
        [
            f"models_dir={models_dir}",
            "+experiment=self_improvement",
            "dataset@synth_data=mt_bench",
            f"synth_data.sources.mt_bench.path={mt_bench_rows}",
            "eval.limit=2",
            "rehearsal_scale=0.25",
            # the stand-in at 1/4 length may cut both answers off: SFT would get no row
            "synth.truncated=keep",
            f"output_root={tmp_path}",
        ],
    )
    run_dir = tmp_path / "self_improvement-gemma_2_9b_it-rehearsal"
    manifest = read_manifest(run_dir)
    assert list(manifest["stages"]) == ["synth", "sft", "eval"]
    assert not (run_dir / "prefs").exists() and not (run_dir / "dpo").exists()
    assert manifest["rehearsal"]["engine"] == "rehearsal-smollm2-135m-instruct"
    synth = read_manifest(run_dir / "synth")
    assert (synth["counts"]["rows_ok"], synth["counts"]["rejects_input"]) == (2, 0)
    rows = pq.read_table(run_dir / "synth" / "sft.parquet").to_pylist()
    for row in rows:
        for call in row["calls"]:
            # Gemma-2-9b-it aggregates: its template has no system role, so the K.1 system
            # prompt went into the first user turn, and the call says so
            assert call["system_folded"] == (call["layer"] == 1)
            assert call["model"] in {
                "gemma-2-9b-it",
                "Llama-3.1-8B-Instruct",
                "Mistral-7B-Instruct-v0.3",
            }
    sft = read_manifest(run_dir / "sft")
    assert sft["status"] == "complete"
    # the paper's Gemma SFT recipe as configured (only bf16 mixed precision is off on CPU)
    args = sft["settings"]["args"]
    assert (args["learning_rate"], args["num_train_epochs"], args["packing"]) == (8e-6, 5, True)
    assert sft["settings"]["effective_batch_size"] == 128 and args["bf16"] is False
    assert sft["counts"]["rows"] == 2 and sft["counts"]["steps"] >= 1
    ev = read_manifest(run_dir / "eval")
    assert ev["status"] == "complete" and ev["counts"]["evaluated"] == 2
    assert ev["summary"]["model"] == "gemma-2-9b-it-sft"
    report = (run_dir / "report.md").read_text()
    assert "**Rehearsal.**" in report.split("\n## ")[0]  # said before anything else
