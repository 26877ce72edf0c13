"""``moaa report RUN_DIR`` (also ``python -m moaa_cluster.reporting RUN_DIR``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moaa_cluster.reporting.costs import load_prices
from moaa_cluster.reporting.page import write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="moaa report",
        description=(
            "Write RUN_DIR/report.md with PNG plots (RUN_DIR/plots/) and a cost table for any "
            "run directory: synth, sample, prefs, judge-eval, eval, train-sft/dpo, or a "
            "pipeline directory of such stages."
        ),
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--prices",
        type=Path,
        help="YAML/JSON: {models: {<model name>|default: {input: $/1M, output: $/1M}}, "
        "gpu_hour: $}",
    )
    p.add_argument("--gpus", type=float, help="GPUs per stage (default: from each manifest)")
    p.add_argument("--gpu-hour-usd", type=float, help="dollars per GPU-hour")
    args = p.parse_args(argv)
    try:
        prices = load_prices(args.prices)
        path = write_report(
            args.run_dir, prices=prices, gpus=args.gpus, gpu_hour_usd=args.gpu_hour_usd
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"moaa report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {path}", flush=True)
    return 0
