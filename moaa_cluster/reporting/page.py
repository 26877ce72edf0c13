"""The report page: ``report.md`` with its cost table, plots and one section per run part."""

from __future__ import annotations

import time
from pathlib import Path

from moaa_cluster.evaluation.table import build_table, format_table
from moaa_cluster.reporting.collect import collect, detect, rehearsal_of
from moaa_cluster.reporting.costs import cost_rows, format_cost_table
from moaa_cluster.reporting.overview import overview_lines
from moaa_cluster.reporting.part import RunPart
from moaa_cluster.reporting.plots import (
    plot_judge,
    plot_losses,
    plot_scores,
    plot_throughput,
    plot_timings,
    plot_tokens,
    plot_win_rates,
)
from moaa_cluster.runs.files import read_json


def rehearsal_lines(rec: dict | None) -> list[str]:
    """The report's opening warning for a rehearsal: what stood in, what the numbers mean."""
    if not rec:
        return []
    names = sorted({m["name"] for m in rec.get("models", {}).values()})
    lines = [
        f"> **Rehearsal.** The packaged model `{rec['stand_in']['name']}` answered for every "
        f"model of this config ({', '.join(names)}), on this machine. The shapes, limits, "
        "prompts, plans and files are the configured ones; the texts, scores and timings say "
        "nothing about the real models.",
    ]
    if rec.get("max_tokens_scale", 1.0) != 1.0:
        lines.append(f"> Answer lengths were scaled by {rec['max_tokens_scale']:g}.")
    lines += [f"> {note}" for note in rec.get("notes", [])]
    return [*lines, ""]


def write_report(
    run_dir: Path,
    *,
    prices: dict | None = None,
    gpus: float | None = None,
    gpu_hour_usd: float | None = None,
    cluster: dict | None = None,
    rehearsal: dict | None = None,
) -> Path:
    """Writes ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path.

    Args:
        run_dir: A stage's run directory or a pipeline directory of stage subdirectories.
        prices: ``{models: {name: {input, output}}, gpu_hour}`` in dollars per 1M tokens
            and per GPU-hour (see :func:`load_prices`).
        gpus: GPUs to charge every stage with, instead of the manifests' cluster configs.
        gpu_hour_usd: Dollars per GPU-hour (overrides ``prices['gpu_hour']``).
        cluster: Cluster config for stages whose manifests carry none (``moaa pipeline``
            passes its own, as its manifest is written after the report).
        rehearsal: The rehearsal record (``moaa_cluster.rehearsal``) when the manifests do
            not carry one yet (``moaa pipeline`` passes its own).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    prices = prices or {}
    kind = detect(run_dir)
    parts, absent = collect(run_dir, kind, gpus, cluster)
    lines = header_lines(run_dir, kind, parts, absent, rehearsal or rehearsal_of(run_dir))
    if not parts:
        lines.append(
            "Nothing to report: no manifest.json, sft.parquet, prefs.parquet, candidates.parquet, "
            "judge_eval.json, summary.json or metrics.jsonl here or in a subdirectory."
        )
    else:
        lines += overview_lines(run_dir, kind, parts)
        lines += table_lines(parts)
        lines += cost_lines(parts, prices, gpu_hour_usd)
        lines += plot_lines(parts, run_dir / "plots")
        for part in parts:
            lines += part_lines(part)
    path = run_dir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)
    return path


def header_lines(
    run_dir: Path, kind: str | None, parts: list[RunPart], absent: list[str], rehearsal: dict | None
) -> list[str]:
    """The title, the kind of run (a pipeline's stages), a rehearsal's warning, gaps."""
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `moaa report {run_dir}`.  ",
        f"Kind: **{kind or 'unrecognized'}**"
        + (
            f" ({len(parts)} stages: {', '.join(s.name + ' = ' + s.kind for s in parts)})"
            if kind == "pipeline"
            else ""
        ),
        "",
    ]
    lines += rehearsal_lines(rehearsal)
    lines += [f"- skipped: stage {n} has no output yet in {run_dir / n}" for n in absent]
    if absent:
        lines.append("")
    return lines


def table_lines(parts: list[RunPart]) -> list[str]:
    """``## Results``: the paper-style table over the run's evaluations (models x protocols)."""
    summaries = [s for p in parts if p.kind == "eval" and (s := read_json(p.path / "summary.json"))]
    if not summaries:
        return []
    return ["## Results", "", format_table(build_table(summaries)), ""]


def cost_lines(parts: list[RunPart], prices: dict, gpu_hour_usd: float | None) -> list[str]:
    """The ``## Cost`` section: how the numbers are made, then the table."""
    rows = cost_rows(parts, prices, gpu_hour_usd)
    return [
        "## Cost",
        "",
        "Tokens as counted by the engines; GPU-hours = stage wall time x the GPUs the "
        "stage's cluster config holds (0 on a CPU cluster); dollars from the given prices "
        "per 1M prompt / generated tokens and per GPU-hour"
        + ("" if prices or gpu_hour_usd is not None else " (none given: `--prices FILE`)")
        + ".",
        "",
        format_cost_table(rows),
        "",
    ]


def plot_lines(parts: list[RunPart], plots_dir: Path) -> list[str]:
    """The ``## Plots`` section: draws each plot, links it, or says what it lacked."""
    judge_rates = [r for s in parts for r in s.judge_rates]
    win_rates = [r for s in parts for r in s.win_rates]
    figures = [
        ("Wall time per stage", plot_timings(parts, plots_dir / "timings.png"), "timings"),
        (
            "Tokens per stage and model",
            plot_tokens(parts, plots_dir / "tokens.png"),
            "token counts",
        ),
        (
            "Throughput per model",
            plot_throughput(parts, plots_dir / "throughput.png"),
            "inference timings with token counts",
        ),
        (
            "Judge parse failures and position consistency",
            plot_judge(judge_rates, plots_dir / "judge.png"),
            "judge statistics (prefs, judge-eval or eval)",
        ),
        (
            "Scores of chosen vs rejected",
            plot_scores(parts, plots_dir / "scores.png"),
            "preference pairs with scores",
        ),
        (
            "Win rates",
            plot_win_rates(win_rates, plots_dir / "win_rates.png"),
            "win rates (eval) or judge accuracy (judge-eval)",
        ),
        ("Training loss", plot_losses(parts, plots_dir / "loss.png"), "training metrics"),
    ]
    lines = ["## Plots", ""]
    for title, png, needs in figures:
        if png is None:
            lines.append(f"- {title}: skipped, the run holds no {needs}.")
        else:
            lines += [f"### {title}", "", f"![{title}](plots/{png.name})", ""]
    return lines


def part_lines(part: RunPart) -> list[str]:
    """One run part's section: its directory, wall times, details and what was missing."""
    lines = ["", f"## {part.name} ({part.kind})", "", f"Directory: `{part.path}`", ""]
    if part.timings:
        lines.append("Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in part.timings.items()))
        lines.append("")
    lines += part.lines
    lines += [f"- skipped: {m}" for m in part.missing]
    return lines
