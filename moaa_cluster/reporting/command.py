"""``moaa report RUN_DIR`` (also ``python -m moaa_cluster.reporting RUN_DIR``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from moaa_cluster.reporting.costs import load_prices
from moaa_cluster.reporting.page import write_report
from moaa_cluster.runs import storage

# what a report never reads: result shards, reject parts, Ray Train's state, model weights
NOT_READ = ("shards", "rejects", "ray_train", "model", "plots")


def report_remote(uri: str, **kw) -> str:
    """The report of a run directory on object storage: its files (but :data:`NOT_READ`)
    copied to a temporary directory, reported there, ``report.md`` and ``plots/`` written
    back next to the run. Returns the report's URI."""
    import pyarrow.fs as pafs

    if storage.kind(uri) != "dir":
        raise FileNotFoundError(f"run directory {uri} does not exist")
    with tempfile.TemporaryDirectory(prefix="moaa-report-") as tmp:
        local = storage.mirror(uri, Path(tmp) / uri.rstrip("/").rsplit("/", 1)[-1], NOT_READ)
        path = write_report(local, **kw)
        text = path.read_text().replace(str(local), uri)  # the report names the run, not tmp
        storage.write_bytes(storage.join(uri, "report.md"), text.encode())
        if (local / "plots").is_dir():
            storage.remove(storage.join(uri, "plots"))
            storage.copy_tree(
                pafs.LocalFileSystem(), str(local / "plots"), storage.join(uri, "plots")
            )
    return storage.join(uri, "report.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="moaa report",
        description=(
            "Write RUN_DIR/report.md with PNG plots (RUN_DIR/plots/) and a cost table for any "
            "run directory: synth, sample, prefs, judge-eval, eval, train-sft/dpo, or a "
            "pipeline directory of such stages."
        ),
    )
    p.add_argument("run_dir", help="a run directory: a local path or an object-store URI")
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
        kw = {"prices": prices, "gpus": args.gpus, "gpu_hour_usd": args.gpu_hour_usd}
        if storage.is_uri(args.run_dir):
            path = report_remote(args.run_dir, **kw)
        else:
            path = write_report(Path(args.run_dir), **kw)
    except (FileNotFoundError, ValueError) as exc:
        print(f"moaa report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {path}", flush=True)
    return 0
