"""How our pipeline's wall time grows with the number of rows, after one engine start.

    python -m benchmarks.scale                          # 50, 100, 200, 400 rows
    python -m benchmarks.scale --sizes 50,100 --max-tokens 48

One engine start, then stage 1 (the same Ray Data stage ``moaa synth`` runs) on the first N
MT-Bench first turns for each size, smallest first, each into a fresh run directory. Beyond
80 rows the questions repeat with their own ids and seeds (distinct calls). Fits
``seconds = intercept + slope * rows``: linear growth after start-up means a small intercept,
R^2 near 1 and a steady marginal cost per row. Writes ``benchmarks/results/scale-<backend>.json``
and prints one line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness


def run(args: argparse.Namespace, bench: harness.Bench, sizes: list[int]) -> dict:
    points: list[dict] = []
    work_dir = Path(tempfile.mkdtemp(prefix="moaa-bench-"))
    with harness.engine_session(bench, args.backend, work_dir) as session:
        startup = dict(session.startup)
        t0 = time.monotonic()
        asyncio.run(harness.warm_up(session.specs, bench.settings.request_timeout_s))
        startup["warm_up_s"] = round(time.monotonic() - t0, 2)
        for n in sizes:
            rows = harness.first_turn_rows(args.questions, n)
            before = harness.scrape(session.metrics_urls) if session.metrics_urls else None
            timeline: dict = {}
            seconds, calls = harness.timed(
                harness.run_pipeline, rows, bench, session.specs, work_dir, timeline
            )
            rec = {"rows": n, **harness.mode_record(seconds, calls)}
            rec["rows_finished_after_s"] = timeline
            rec["seconds_per_row"] = round(seconds / n, 3)
            if before is not None:
                after = harness.scrape(session.metrics_urls)
                rec["server_metrics"] = {k: int(after[k] - before[k]) for k in after}
            points.append(rec)
            print(f"{n} rows: {seconds:.1f}s, {rec['completion_tokens']} generated", flush=True)
    shutil.rmtree(work_dir, ignore_errors=True)  # kept only when a run fails (server logs)
    fit = None
    if len(points) >= 2:
        fit = harness.linear_fit([p["rows"] for p in points], [p["seconds"] for p in points])
        fit = {k: round(v, 4) for k, v in fit.items()}
    marginal = [
        {
            "from_rows": a["rows"],
            "to_rows": b["rows"],
            "seconds_per_extra_row": round(
                (b["seconds"] - a["seconds"]) / (b["rows"] - a["rows"]), 3
            ),
        }
        for a, b in zip(points, points[1:], strict=False)
    ]
    result = {
        "backend": args.backend,
        "questions": str(args.questions),
        "settings": {
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "prefix_caching": args.prefix_caching,
            "pipeline_workers": bench.settings.workers,
            "pipeline_rows_per_worker": bench.settings.batch_size,
            "overrides": args.override,
        },
        "startup_s": startup,
        "points": points,
        "marginal": marginal,
        "fit": fit,
    }
    path = harness.write_result(f"scale-{args.backend}", result, args.out)
    sizes_text = ", ".join(f"{p['rows']} rows {p['seconds']:.1f}s" for p in points)
    fit_text = (
        f"; fit {fit['slope']:.3f} s/row + {fit['intercept']:.1f}s (R^2 {fit['r2']:.3f})"
        if fit
        else ""
    )
    start = sum(startup.values())
    print(f"scale[{args.backend}]: start-up {start:.1f}s; {sizes_text}{fit_text} -> {path}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__.split("\n\n")[0],
        epilog="Run under the real-stack lock: flock /tmp/moaa-realstack.lock python -m benchmarks.scale",
    )
    p.add_argument("--backend", choices=["serve", "openai"], default="serve")
    p.add_argument("--sizes", default="50,100,200,400", help="comma-separated row counts")
    harness.add_run_args(p)
    p.add_argument("--prefix-caching", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        if not sizes or sizes[0] < 1:
            raise ValueError("--sizes needs positive row counts, e.g. 50,100")
        # as `moaa synth` runs by default: no prompt copies in the provenance
        overrides = [
            f"mixture.sampling.max_tokens={args.max_tokens}",
            f"seed={args.seed}",
            "record_prompts=false",
        ]
        bench = harness.load_bench([*overrides, *args.override], prefix_caching=args.prefix_caching)
        harness.first_turn_rows(args.questions, 1)  # refuse a missing file before engines start
    except (FileNotFoundError, ValueError) as exc:
        print(f"scale: error: {exc}", file=sys.stderr)
        return 2
    run(args, bench, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
