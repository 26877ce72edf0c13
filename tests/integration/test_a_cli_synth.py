"""The main job through the real CLI: `moaa synth` on a file mixing good and bad records.

Runs first (file order) in its own process with its own local Ray, before the session
cluster of the other integration tests exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import REPO

# The bad-input corpus is a fault-injection fixture (tests/faults/README.md): raw bytes, with
# a sidecar listing each bad line's expected reject reason.
CORPUS = REPO / "tests" / "faults" / "fixtures" / "bad_inputs.jsonl"
EXPECTED = json.loads(CORPUS.with_name("bad_inputs.expected.json").read_text())
BAD = EXPECTED["bad"]


def test_cli_synth_end_to_end(tmp_path: Path, models_dir: Path):
    out_root = tmp_path / "outputs"
    cmd = [
        sys.executable,
        "-m",
        "moaa_cluster.cli",
        "synth",
        "~dataset.sources.embedded_demo",
        f"+dataset.sources.fixture.path={CORPUS}",
        "dataset.name=fixture",
        f"output_root={out_root}",
        "record_prompts=true",
    ]
    env = {**os.environ, "MOAA_MODELS_DIR": str(models_dir)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = out_root / "synth-embedded-fixture"
    # the summary counts both: good rows generated, bad records rejected
    assert f"rows: 3 ok (1 multi-turn), 0 failed in inference, {len(BAD)} rejected on input" in (
        proc.stdout
    ), proc.stdout[-2000:]

    # --- SFT rows: TRL conversational format + provenance -------------------------------
    # a row whose final answer stopped at max_tokens goes to sft_truncated.parquet (default
    # `truncated: exclude`), the others to sft.parquet; together they are the 3 good rows
    kept = pq.read_table(run_dir / "sft.parquet").to_pylist()
    cut_file = run_dir / "sft_truncated.parquet"
    cut = pq.read_table(cut_file).to_pylist() if cut_file.exists() else []
    rows = kept + cut
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    for row, truncated in [(r, False) for r in kept] + [(r, True) for r in cut]:
        finals = [c for c in row["calls"] if c["layer"] == 1]
        assert row["truncated"] is truncated
        assert any(c["finish_reason"] == "length" for c in finals) is truncated
    for row in rows:
        users = [m for m in row["messages"] if m["role"] == "user"]
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(users)
        assert all(a["content"].strip() for a in assistants)
        n_turns = len(users)
        assert len(row["calls"]) == 3 * n_turns  # two proposers + aggregator per turn
        for t in range(n_turns):
            props = [c for c in row["calls"] if c["turn"] == t and c["layer"] == 0]
            (agg,) = [c for c in row["calls"] if c["turn"] == t and c["layer"] == 1]
            assert {c["model"] for c in props} == {"smollm2-135m-instruct", "gemma-3-270m"}
            assert agg["model"] == "smollm2-135m-instruct"
            assert assistants[t]["content"] == agg["text"]
            agg_messages = json.loads(agg["prompt"])
            system = agg_messages[0]
            assert system["role"] == "system"
            for i, p in enumerate(props, start=1):
                assert f"\n{i}. {p['text']}" in system["content"]  # every answer, numbered
            # the engine's own count: the aggregator prompt is at least as long as the answers
            assert agg["prompt_tokens"] > sum(p["completion_tokens"] for p in props)
            for c in row["calls"]:
                assert c["finish_reason"] in ("stop", "length")
                assert c["completion_tokens"] > 0
            if t == 1:  # Eq. 3: every seat of turn 2 sees turn 1's aggregated answer
                turn0_agg = next(c for c in row["calls"] if c["turn"] == 0 and c["layer"] == 1)
                for c in row["calls"]:
                    if c["turn"] == 1:
                        msgs = [m for m in json.loads(c["prompt"]) if m["role"] != "system"]
                        assert msgs[1] == {"role": "assistant", "content": turn0_agg["text"]}

    # --- rejects: each bad line with its reason; nothing lost ---------------------------
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == len(BAD)
    reasons = " | ".join(r["reason"] for r in rejects)
    for bad in BAD:  # each bad line once, at its own line, with its specific reason
        (hit,) = [r for r in rejects if bad["reason"] in r["reason"]]
        if bad["where"] is not None:
            assert hit["where"] == bad["where"], (bad, hit)
    assert "duplicate of bad_inputs.jsonl:1" in reasons  # names the line it repeats

    # --- manifest ----------------------------------------------------------------------
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["rows_ok"] == 3
    assert manifest["counts"]["rejects_input"] == len(BAD)
    assert manifest["counts"]["rows_in"] == len(EXPECTED["good_lines"]) + len(BAD)
    assert manifest["timings_s"]["engine_start"] > 0
    assert manifest["models"]["smollm2_135m_instruct"]["checksums"]["model.safetensors"]
    assert manifest["versions"]["ray"] == "2.60.0"

    # --- loads with `datasets`, ablations derive without inference ----------------------
    import datasets

    files = [str(run_dir / "sft.parquet")] + ([str(cut_file)] if cut_file.exists() else [])
    ds = datasets.load_dataset("parquet", data_files=files, split="train")  # both files
    assert ds.num_rows == 3 and ds[0]["messages"][0]["role"] == "user"
    assert sum(ds["truncated"]) == len(cut)
    # the same rows as parquet datasets (directories written by the Ray Data workers)
    by_dir = datasets.load_dataset("parquet", data_dir=str(run_dir / "sft"), split="train")
    assert sorted(by_dir["id"]) == sorted(r["id"] for r in kept)
    assert (run_dir / "sft_truncated").is_dir() is bool(cut)
    from moaa_cluster.pipeline.derive import derive

    combined = derive(rows, "combined")
    assert len(combined) == 6 and {r["teacher"] for r in combined} == {
        "smollm2-135m-instruct",
        "gemma-3-270m",
    }
