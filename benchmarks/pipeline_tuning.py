"""Our pipeline's wall time under different row concurrency, in one engine session.

    python -m benchmarks.pipeline_tuning                        # 4x8 (default), 4x16, 2x32
    python -m benchmarks.pipeline_tuning --variants 2x32/32,2x32/4 --rows 64

Stage 1 (the Ray Data stage ``moaa synth`` runs) on the same MT-Bench first turns once per
variant ``WORKERSxROWS`` (Ray Data actors x rows each keeps in flight), then per-row
streaming written straight against the engines as the reference with every row in flight.
Same engines, same sampling, one run, so the variants compare. Writes
``benchmarks/results/pipeline_tuning-<backend>.json`` and prints one line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import harness


def parse_variants(text: str) -> list[tuple[int, int, int | None]]:
    """``"4x8,2x32/4"`` -> ``[(4, 8, None), (2, 32, 4)]``.

    ``WORKERSxROWS[/BLOCK]``: Ray Data actors, rows each keeps in flight, rows per block
    (default: the pipeline's own, ``pipeline.frame.BLOCK_ROWS``).
    """
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        head, _, block = part.partition("/")
        workers, _, rows = head.partition("x")
        nums = [workers, rows] + ([block] if "/" in part else [])
        if not all(n.isdigit() and int(n) >= 1 for n in nums):
            raise ValueError(f"variant {part!r} is not WORKERSxROWS[/BLOCK], e.g. 4x8 or 2x32/4")
        out.append((int(workers), int(rows), int(block) if block else None))
    if not out:
        raise ValueError("no variants given")
    return out


def run(args: argparse.Namespace) -> dict:
    variants = parse_variants(args.variants)
    bench = harness.load_bench(
        [f"mixture.sampling.max_tokens={args.max_tokens}", f"seed={args.seed}", *args.override]
    )
    rows = harness.first_turn_rows(args.questions, args.rows)
    harness.allow_min_tokens()
    sampling = harness.mixture_sampling(bench.defaults, bench.settings.seed)
    timeout = bench.settings.request_timeout_s
    work_dir = Path(tempfile.mkdtemp(prefix="moaa-bench-"))
    results: dict[str, dict] = {}
    with harness.engine_session(bench, args.backend, work_dir) as session:
        startup = dict(session.startup)
        t0 = time.monotonic()
        asyncio.run(harness.warm_up(session.specs, timeout))
        startup["warm_up_s"] = round(time.monotonic() - t0, 2)
        for workers, per_worker, block in variants:
            tuned = replace(
                bench,
                settings=replace(
                    bench.settings, workers=workers, batch_size=per_worker, rows_per_block=block
                ),
            )
            timeline: dict = {}
            seconds, calls = harness.timed(
                harness.run_pipeline, rows, tuned, session.specs, work_dir, timeline
            )
            key = f"pipeline {workers}x{per_worker}" + (f"/{block}" if block else "")
            results[key] = harness.mode_record(seconds, calls, rows_finished_after_s=timeline)
            print(
                f"{key}: {seconds:.1f}s, {results[key]['completion_tokens']} generated", flush=True
            )

        async def streaming():
            backends = harness.make_backends(session.specs, timeout)
            return await harness.row_streaming(rows, bench.mixture, backends, sampling)

        seconds, calls = harness.timed(lambda: asyncio.run(streaming()))
        results["streaming (reference)"] = harness.mode_record(seconds, calls)
        print(f"streaming (reference): {seconds:.1f}s", flush=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    ref = results["streaming (reference)"]["seconds"]
    ratios = {
        k: round(v["seconds"] / ref, 3) for k, v in results.items() if k.startswith("pipeline")
    }
    result = {
        "backend": args.backend,
        "rows": len(rows),
        "questions": str(args.questions),
        "settings": {
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "variants": args.variants,
            "overrides": args.override,
        },
        "startup_s": startup,
        "modes": results,
        "pipeline_over_streaming": ratios,
    }
    path = harness.write_result(f"pipeline_tuning-{args.backend}", result, args.out)
    times = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in results.items())
    print(
        f"pipeline_tuning[{args.backend}]: {len(rows)} rows; {times}; vs streaming {ratios} -> {path}"
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline_tuning",
        description=__doc__.split("\n\n")[0],
        epilog="Run under the real-stack lock: flock /tmp/moaa-realstack.lock python -m "
        "benchmarks.pipeline_tuning",
    )
    p.add_argument("--backend", choices=["serve", "openai"], default="serve")
    p.add_argument(
        "--variants",
        default="4x8,4x16,2x32",
        help="comma-separated WORKERSxROWS[/BLOCK]: Ray Data actors x rows each keeps in "
        "flight [/ rows per block]",
    )
    p.add_argument("--rows", type=int, default=64, help="MT-Bench first turns (default 64)")
    harness.add_run_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parse_variants(args.variants)
    except ValueError as exc:
        print(f"pipeline_tuning: error: {exc}", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
