"""Per-row streaming vs a layer barrier when answer lengths vary widely.

    python -m benchmarks.streaming                       # 64 rows, proposer answers 8..192 tokens
    python -m benchmarks.streaming --min-len 16 --max-len 512 --backend openai

Each proposer call is forced to a length drawn log-uniformly from [--min-len, --max-len]
(seeded per row and seat; ``max_tokens = min_tokens``), each aggregator call to
--aggregator-tokens, so both schedules generate exactly the same number of tokens. Under a
barrier every aggregator waits for the longest proposer answer of the whole layer; with
per-row streaming (the schedule our pipeline runs) a row whose proposers were short is
aggregated while the long answers are still being written. Writes
``benchmarks/results/streaming-<backend>.json`` and prints one line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness


def forced_sampling(bench: harness.Bench, rows: list[dict], args: argparse.Namespace):
    """The mixture's sampling with every call's length fixed; returns (sampler, lengths)."""
    base = harness.mixture_sampling(bench.defaults, bench.settings.seed)
    mix = bench.mixture
    last = len(mix.layers) - 1
    keys = [
        f"{r['id']}:{layer}:{seat}"
        for r in rows
        for layer in range(last)
        for seat in range(len(mix.layers[layer]))
    ]
    lengths = harness.log_uniform_lengths(keys, args.min_len, args.max_len, args.seed)

    def sampling(row: dict, step) -> dict:
        s = base(row, step)
        n = (
            args.aggregator_tokens
            if step.layer == last
            else lengths[f"{row['id']}:{step.layer}:{step.index}"]
        )
        s.update(max_tokens=n, min_tokens=n)
        return s

    return sampling, lengths


def run(args: argparse.Namespace, bench: harness.Bench, rows: list[dict]) -> dict:
    harness.allow_min_tokens()
    sampling, lengths = forced_sampling(bench, rows, args)
    timeout = bench.settings.request_timeout_s
    results: dict[str, dict] = {}
    work_dir = Path(tempfile.mkdtemp(prefix="moaa-bench-"))
    with harness.engine_session(bench, args.backend, work_dir) as session:
        startup = dict(session.startup)
        t0 = time.monotonic()
        asyncio.run(harness.warm_up(session.specs, timeout))
        startup["warm_up_s"] = round(time.monotonic() - t0, 2)
        schedules = {"barrier": harness.layer_barrier, "streaming": harness.row_streaming}
        for name in args.order.split(","):

            async def go(fn=schedules[name]) -> tuple[float, list]:
                backends = harness.make_backends(session.specs, timeout)
                t = time.monotonic()
                calls = await fn(rows, bench.mixture, backends, sampling)
                return time.monotonic() - t, calls

            before = harness.scrape(session.metrics_urls) if session.metrics_urls else None
            seconds, calls = asyncio.run(go())
            rec = harness.mode_record(seconds, calls)
            rec["length_mismatches"] = sum(
                c["completion_tokens"]
                != lengths.get(f"{c['row']}:{c['layer']}:{c['seat']}", args.aggregator_tokens)
                for c in calls
            )
            if before is not None:
                after = harness.scrape(session.metrics_urls)
                rec["server_metrics"] = {k: int(after[k] - before[k]) for k in after}
            results[name] = rec
            print(
                f"{name}: {seconds:.1f}s, {rec['completion_tokens']} generated tokens", flush=True
            )
    shutil.rmtree(work_dir, ignore_errors=True)  # kept only when a run fails (server logs)
    values = sorted(lengths.values())
    ratio = round(results["barrier"]["seconds"] / results["streaming"]["seconds"], 3)
    result = {
        "backend": args.backend,
        "rows": len(rows),
        "questions": str(args.questions),
        "settings": {
            "proposer_lengths": {
                "distribution": f"log-uniform [{args.min_len}, {args.max_len}]",
                "min": values[0],
                "median": statistics.median(values),
                "mean": round(statistics.mean(values), 1),
                "max": values[-1],
            },
            "aggregator_tokens": args.aggregator_tokens,
            "seed": args.seed,
            "prefix_caching": args.prefix_caching,
            "order": args.order,
            "overrides": args.override,
        },
        "startup_s": startup,
        "modes": results,
        "ratios": {"barrier/streaming": ratio},
    }
    path = harness.write_result(f"streaming-{args.backend}", result, args.out)
    print(
        f"streaming[{args.backend}]: {len(rows)} rows, proposer answers {values[0]}-{values[-1]} "
        f"tokens (median {statistics.median(values):g}); barrier "
        f"{results['barrier']['seconds']:.1f}s, streaming {results['streaming']['seconds']:.1f}s; "
        f"barrier/streaming={ratio:.2f} -> {path}",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming",
        description=__doc__.split("\n\n")[0],
        epilog="Run under the real-stack lock: flock /tmp/moaa-realstack.lock python -m benchmarks.streaming",
    )
    p.add_argument("--backend", choices=["serve", "openai"], default="serve")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--min-len", type=int, default=8, help="shortest proposer answer (tokens)")
    p.add_argument("--max-len", type=int, default=192, help="longest proposer answer (tokens)")
    p.add_argument("--aggregator-tokens", type=int, default=32)
    harness.add_run_args(p, max_tokens=None)
    p.add_argument("--order", default="barrier,streaming", help="schedules in run order")
    p.add_argument("--prefix-caching", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not 1 <= args.min_len <= args.max_len:
            raise ValueError("need 1 <= --min-len <= --max-len")
        if sorted(args.order.split(",")) != ["barrier", "streaming"]:
            raise ValueError("--order lists barrier and streaming, each once")
        overrides = [f"mixture.sampling.max_tokens={args.max_len}", f"seed={args.seed}"]
        bench = harness.load_bench([*overrides, *args.override], prefix_caching=args.prefix_caching)
        rows = harness.first_turn_rows(args.questions, args.rows)
    except (FileNotFoundError, ValueError) as exc:
        print(f"streaming: error: {exc}", file=sys.stderr)
        return 2
    run(args, bench, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
