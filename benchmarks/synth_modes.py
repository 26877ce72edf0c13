"""Stage 1 under five schedules of the same calls, on one set of engines, in one run.

    python -m benchmarks.synth_modes                      # engines hosted by Ray Serve LLM
    python -m benchmarks.synth_modes --backend openai     # local vLLM OpenAI servers over HTTP
    python -m benchmarks.synth_modes --rows 80 --max-tokens 128 -o mixture=embedded

Schedules (see ``benchmarks/harness.py``): (a) our pipeline, (b) a layer barrier, (c) per-row
streaming written directly against the engines, (d) the original MoA code's shape (16 rows in
parallel, proposers one after another), (e) the floor: (a)'s calls with no dependencies, all
at once, each forced to the length it had. Rows are MT-Bench first turns; every schedule uses
the mixture's prompts, sampling and per-call seeds. Engine start-up is reported apart from
generation. Writes ``benchmarks/results/synth_modes-<backend>.json`` and prints one line.
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

LABELS = {
    "pipeline": "a",
    "barrier": "b",
    "streaming": "c",
    "original": "d",
    "floor": "e",
}


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    """The issue's ratios from schedule wall times (a missing schedule drops its ratios).

    ``a/min(b,c)``: our pipeline against the better hand-written schedule; ``d/a``: the
    original code's shape against ours; ``a/e``: ours against the dependency-free floor.
    """
    out: dict[str, float] = {}
    a = seconds.get("pipeline")
    best = [seconds[k] for k in ("barrier", "streaming") if k in seconds]
    if a and best:
        out["a/min(b,c)"] = round(a / min(best), 3)
    if a and "original" in seconds:
        out["d/a"] = round(seconds["original"] / a, 3)
    if a and seconds.get("floor"):
        out["a/e"] = round(a / seconds["floor"], 3)
    return out


def summary_line(backend: str, rows: int, startup: dict, modes: dict, r: dict) -> str:
    start = sum(v for v in startup.values() if isinstance(v, int | float))
    times = " ".join(f"({LABELS[k]}) {m['seconds']:.1f}s" for k, m in modes.items())
    calls = next(iter(modes.values()))["calls"] if modes else 0
    rs = " ".join(f"{k}={v:.2f}" for k, v in r.items())
    return f"synth_modes[{backend}]: {rows} rows, {calls} calls; start-up {start:.1f}s; generation {times}; {rs}"


def prepare(args: argparse.Namespace) -> tuple[harness.Bench, list[dict], list[str]]:
    """Everything that can be refused before an engine starts: config, rows, schedules."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown schedules {sorted(unknown)}; known: {list(LABELS)}")
    if modes and modes[0] == "floor":
        raise ValueError("the floor replays another schedule's calls: list it after one")
    overrides = [f"mixture.sampling.max_tokens={args.max_tokens}", f"seed={args.seed}"]
    bench = harness.load_bench([*overrides, *args.override], prefix_caching=args.prefix_caching)
    rows = harness.first_turn_rows(args.questions, args.rows)
    return bench, rows, modes


def run(args: argparse.Namespace, bench: harness.Bench, rows: list[dict], modes: list[str]) -> dict:
    """Starts the engines, runs the schedules in order, writes the result file."""
    harness.allow_min_tokens()
    sampling = harness.mixture_sampling(bench.defaults, bench.settings.seed)
    timeout = bench.settings.request_timeout_s
    work_dir = Path(tempfile.mkdtemp(prefix="moaa-bench-"))
    results: dict[str, dict] = {}
    calls_of: dict[str, list[dict]] = {}
    extra: dict = {}
    with harness.engine_session(bench, args.backend, work_dir) as session:
        startup = dict(session.startup)
        t0 = time.monotonic()
        asyncio.run(harness.warm_up(session.specs, timeout))
        startup["warm_up_s"] = round(time.monotonic() - t0, 2)
        print(f"engines up: {startup}", flush=True)

        async def driver(schedule: str, reference: list[dict] | None) -> tuple[float, list]:
            backends = harness.make_backends(session.specs, timeout)
            t = time.monotonic()
            if schedule == "barrier":
                calls = await harness.layer_barrier(rows, bench.mixture, backends, sampling)
            elif schedule == "streaming":
                calls = await harness.row_streaming(rows, bench.mixture, backends, sampling)
            elif schedule == "original":
                calls = await harness.original_shape(
                    rows, bench.mixture, backends, sampling, procs=args.original_procs
                )
            else:
                calls = await harness.floor(reference or [], bench.mixture, backends, sampling)
            return time.monotonic() - t, calls

        for schedule in modes:
            before = harness.scrape(session.metrics_urls) if session.metrics_urls else None
            timeline: dict = {}
            if schedule == "pipeline":
                seconds, calls = harness.timed(
                    harness.run_pipeline, rows, bench, session.specs, work_dir, timeline
                )
            else:
                reference = calls_of.get("pipeline") or next(iter(calls_of.values()), None)
                seconds, calls = asyncio.run(driver(schedule, reference))
            calls_of[schedule] = calls
            rec = harness.mode_record(seconds, calls)
            if timeline:
                rec["rows_finished_after_s"] = timeline
            if schedule != "floor":
                ok, total = harness.aggregator_prompts_complete(calls, bench.mixture)
                rec["aggregator_prompts_with_every_answer"] = f"{ok}/{total}"
            else:
                rec["length_mismatches"] = sum(
                    c["completion_tokens"] != c["asked_tokens"] for c in calls
                )
            first = next(iter(calls_of))
            if schedule not in (first, "floor"):
                rec[f"same_text_as_{first}"] = round(
                    harness.same_text_fraction(calls, calls_of[first]), 3
                )
            if before is not None:
                after = harness.scrape(session.metrics_urls)
                rec["server_metrics"] = {k: int(after[k] - before[k]) for k in after}
            results[schedule] = rec
            print(
                f"({LABELS[schedule]}) {schedule}: {seconds:.1f}s, {rec['calls']} calls, "
                f"{rec['prompt_tokens']} prompt + {rec['completion_tokens']} generated tokens",
                flush=True,
            )
        if "pipeline" in modes and not args.skip_pass_through:
            seconds, _ = harness.timed(harness.run_pass_through, rows, bench, work_dir)
            extra["pipeline_pass_through_s"] = round(seconds, 2)
    shutil.rmtree(work_dir, ignore_errors=True)  # kept only when a run fails (server logs)
    r = ratios({k: v["seconds"] for k, v in results.items()})
    result = {
        "backend": args.backend,
        "rows": len(rows),
        "questions": str(args.questions),
        "settings": {
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "prefix_caching": args.prefix_caching,
            "original_procs": args.original_procs,
            "pipeline_workers": bench.settings.workers,
            "pipeline_rows_per_worker": bench.settings.batch_size,
            "overrides": args.override,
            "mixture": [
                [{"model": a.model, "sampling": a.sampling} for a in layer]
                for layer in bench.mixture.layers
            ],
            "sampling_defaults": bench.defaults,
        },
        "token_counts": "usage reported by the engine in each response"
        + ("; server_metrics: the servers' /metrics counters" if args.backend == "openai" else ""),
        "startup_s": startup,
        "modes": {f"({LABELS[k]}) {k}": v for k, v in results.items()},
        "ratios": r,
        **extra,
    }
    path = harness.write_result(f"synth_modes-{args.backend}", result, args.out)
    line = summary_line(args.backend, len(rows), startup, results, r)
    print(f"{line} -> {path}", flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.synth_modes",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run under the real-stack lock on a shared machine: "
        "flock /tmp/moaa-realstack.lock python -m benchmarks.synth_modes",
    )
    p.add_argument("--backend", choices=["serve", "openai"], default="serve")
    p.add_argument("--rows", type=int, default=64, help="MT-Bench first turns (default 64)")
    harness.add_run_args(p)
    p.add_argument("--modes", default=",".join(LABELS), help="comma-separated, in run order")
    p.add_argument("--original-procs", type=int, default=16, help="rows in parallel in (d)")
    p.add_argument("--prefix-caching", action="store_true", help="leave vLLM prefix caching on")
    p.add_argument("--skip-pass-through", action="store_true", help="skip the no-model pipeline")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prepared = prepare(args)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"synth_modes: error: {exc}", file=sys.stderr)
        return 2
    run(args, *prepared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
