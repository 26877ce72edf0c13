"""Start-up costs of a run: Ray, each engine alone, all engines together, the Ray Data pool.

    python -m benchmarks.startup
    python -m benchmarks.startup -o mixture=embedded_single_proposer

In one process, the way ``moaa synth`` starts: Ray (local), then each of the mixture's engines
alone (started, then stopped), then all of them at once (what a run does), then the Ray Data
actor pool with pass-through workers (no model calls) and one real row through the mixture.
Writes ``benchmarks/results/startup-serve.json`` and prints one line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness


def run(args: argparse.Namespace) -> dict:
    from moaa_cluster.engines import host as engine_host

    bench = harness.load_bench(list(args.override))
    rows = harness.first_turn_rows(args.questions, 1)
    work_dir = Path(tempfile.mkdtemp(prefix="moaa-bench-"))
    specs = list({s.name: s for s in bench.specs.values()}.values())
    out: dict = {"engines_alone_s": {}, "engines_stop_s": {}}
    t0 = time.monotonic()
    with engine_host.hosting(bench.cluster) as host:
        out["ray_init_s"] = round(time.monotonic() - t0, 2)
        for spec in specs:
            t = time.monotonic()
            host.use([spec])
            out["engines_alone_s"][spec.name] = round(time.monotonic() - t, 2)
            print(f"{spec.name}: ready in {out['engines_alone_s'][spec.name]:.1f}s", flush=True)
            t = time.monotonic()
            host.use([])
            out["engines_stop_s"][spec.name] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        host.use(specs)
        out["engines_together_s"] = round(time.monotonic() - t, 2)
        print(f"all {len(specs)} engines together: {out['engines_together_s']:.1f}s", flush=True)
        seconds, _ = harness.timed(harness.run_pass_through, rows, bench, work_dir)
        out["data_pool_pass_through_1_row_s"] = round(seconds, 2)
        seconds, calls = harness.timed(harness.run_pipeline, rows, bench, bench.specs, work_dir)
        out["first_row_through_mixture_s"] = round(seconds, 2)
        out["first_row_calls"] = len(calls)
    alone = sum(out["engines_alone_s"].values())
    out["together_over_sum_alone"] = round(out["engines_together_s"] / alone, 3) if alone else None
    out["run_startup_s"] = round(
        out["ray_init_s"] + out["engines_together_s"] + out["data_pool_pass_through_1_row_s"], 2
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    result = {"backend": "serve", "settings": {"overrides": args.override}, **out}
    path = harness.write_result("startup-serve", result, args.out)
    each = ", ".join(f"{k} {v:.1f}s" for k, v in out["engines_alone_s"].items())
    print(
        f"startup[serve]: Ray {out['ray_init_s']:.1f}s; alone {each}; together "
        f"{out['engines_together_s']:.1f}s ({out['together_over_sum_alone']} of the sum); "
        f"Ray Data pool {out['data_pool_pass_through_1_row_s']:.1f}s; a run starts in "
        f"{out['run_startup_s']:.1f}s -> {path}",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.startup",
        description=__doc__.split("\n\n")[0],
        epilog="Run under the real-stack lock: flock /tmp/moaa-realstack.lock python -m "
        "benchmarks.startup",
    )
    harness.add_run_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
