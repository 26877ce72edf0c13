"""The embedded default's stage 1 on two versions of the code, interleaved, in one run.

    python -m benchmarks.synth_before_after --before /work/before            # 2 rounds
    python -m benchmarks.synth_before_after --before <tree> --after <tree> --rounds 3

Runs ``benchmarks.synth_modes`` (our pipeline (a) and the hand-written per-row streaming
schedule (c), same engines, same calls) from each code tree in turn: before, after, before,
after... Each run starts its own engines. Schedule (c) is written against the engines
directly and does not use the code under test, so ``a/c`` in each run is our pipeline's time
normalized by that run's machine speed; comparing ``a/c`` before and after cancels most of
the noise of a shared 2-core machine. Writes ``benchmarks/results/synth_before_after.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent


def git_head(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()[:100]


def one_run(tree: Path, label: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """``synth_modes`` (pipeline, streaming) from ``tree``; its result file, read back."""
    out = out_dir / f"{label}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.synth_modes",
        "--modes",
        "pipeline,streaming",
        "--skip-pass-through",
        "--rows",
        str(args.rows),
        "--max-tokens",
        str(args.max_tokens),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    rec = json.loads(out.read_text())
    modes = rec["modes"]
    a, c = modes["(a) pipeline"]["seconds"], modes["(c) streaming"]["seconds"]
    return {
        "tree": label.split("-")[0],
        "pipeline_s": a,
        "streaming_s": c,
        "a/c": round(a / c, 3),
        "engine_start_s": rec["startup_s"].get("engine_start_s"),
        "calls": modes["(a) pipeline"]["calls"],
        "completion_tokens": modes["(a) pipeline"]["completion_tokens"],
        "wall_s": round(time.monotonic() - t0, 1),
    }


def summarize(runs: list[dict]) -> dict:
    out = {}
    for tree in ("before", "after"):
        mine = [r for r in runs if r["tree"] == tree]
        if mine:
            out[tree] = {
                "a/c_median": round(statistics.median(r["a/c"] for r in mine), 3),
                "pipeline_s_median": round(statistics.median(r["pipeline_s"] for r in mine), 1),
            }
    if len(out) == 2:
        out["after/before (a/c)"] = round(
            out["after"]["a/c_median"] / out["before"]["a/c_median"], 3
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.synth_before_after",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--before", type=Path, required=True, help="the earlier code tree")
    p.add_argument("--after", type=Path, default=ROOT, help="the later code tree (this one)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="moaa-before-after-") as tmp:
        for k in range(args.rounds):
            for label, tree in (("before", args.before), ("after", args.after)):
                rec = one_run(tree, f"{label}-{k}", args, Path(tmp))
                runs.append(rec)
                print(f"round {k + 1} {label}: {rec}", flush=True)
    result = {
        "rows": args.rows,
        "max_tokens": args.max_tokens,
        "before": {"tree": str(args.before), "commit": git_head(args.before)},
        "after": {"tree": str(args.after), "commit": git_head(args.after)},
        "runs": runs,
        "summary": summarize(runs),
    }
    path = harness.write_result("synth_before_after", result, args.out)
    print(f"synth_before_after: {result['summary']} -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
