"""The paper's table: one row per evaluated model, one column per protocol, with intervals.

Built from evaluation summaries (``summary.json`` of ``moaa eval`` runs: a Hydra sweep over
``protocol`` and ``model``, or the eval stages of ``moaa pipeline``). Each cell is the
protocol's headline (AlpacaEval 2: LC win rate; Arena-Hard: BT win rate; MT-Bench: score;
pairwise: win rate) with its interval, and the judge that produced it, so a table made with a
local judge is never mistaken for the official GPT-4-judged numbers.
"""

from __future__ import annotations

from pathlib import Path

from moaa_cluster.evaluation.protocol_summary import headline
from moaa_cluster.runs import storage
from moaa_cluster.runs.files import read_json, save_json

ORDER = ("alpaca_eval2", "arena_hard", "mt_bench", "pairwise")


def cell_of(summary: dict) -> tuple[str, dict]:
    """``(column, cell)`` of one evaluation summary."""
    if "protocol" in summary:
        h = dict(summary["protocol"]["headline"])
    else:  # pairwise: the win rate is a fraction in the summary
        w = summary["win_rate"]

        def pct(v: float | None) -> float | None:
            return None if v is None else 100 * v

        h = headline("pairwise", pct(w["win_rate"]), pct(w["ci_low"]), pct(w["ci_high"]))
    column = h["protocol"]
    if column in ("pairwise", "alpaca_eval2", "arena_hard") and summary.get("baseline"):
        column = f"{column} vs {summary['baseline']}"
    return column, {**h, "judge": summary.get("judge_name"), "n": summary.get("evaluated")}


def build_table(summaries: list[dict]) -> dict:
    """``{"models": [...], "columns": [...], "cells": {model: {column: cell}}, "baselines":
    {baseline: [column, ...]}}``; a later summary of the same model and column replaces an
    earlier one. A baseline that is not itself evaluated gets a row too (the pipeline's base
    model: base, SFT, DPO in one table), at 50% in its columns by definition."""
    cells: dict[str, dict[str, dict]] = {}
    baselines: dict[str, list[str]] = {}
    for s in summaries:
        column, cell = cell_of(s)
        cells.setdefault(s["model"], {})[column] = cell
        if column != cell["protocol"]:  # cell_of named the baseline in the column
            theirs = baselines.setdefault(s["baseline"], [])
            if column not in theirs:
                theirs.append(column)
    columns = sorted(
        {c for row in cells.values() for c in row},
        key=lambda c: (ORDER.index(c.split(" ")[0]) if c.split(" ")[0] in ORDER else 9, c),
    )
    baselines = {b: cols for b, cols in baselines.items() if b not in cells}
    return {"models": list(cells), "columns": columns, "cells": cells, "baselines": baselines}


def _fmt(cell: dict | None) -> str:
    if cell is None or cell.get("value") is None:
        return "-"
    digits = 2 if cell["unit"] == "1-10" else 1
    text = f"{cell['value']:.{digits}f}"
    if cell.get("low") is not None and cell.get("high") is not None:
        text += f" [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"
    return text


def format_table(table: dict) -> str:
    """Markdown: models down, protocols across, then which judge made each column."""
    cols = table["columns"]
    head = [f"{c} ({_unit(table, c)})" for c in cols]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, theirs in (table.get("baselines") or {}).items():
        marks = ["50.0 (the baseline)" if c in theirs else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(marks) + " |")
    for model in table["models"]:
        row = table["cells"][model]
        lines.append(f"| {model} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    judges = {
        c: sorted({str(r[c]["judge"]) for r in table["cells"].values() if c in r}) for c in cols
    }
    lines.append("")
    lines.append(
        "Judges (local, not the benchmarks' GPT-4 judges): "
        + "; ".join(f"{c}: {', '.join(j)}" for c, j in judges.items())
    )
    return "\n".join(lines)


def _unit(table: dict, column: str) -> str:
    for row in table["cells"].values():
        if column in row:
            return row[column]["metric"] + (", %" if row[column]["unit"] == "%" else ", 1-10")
    return ""


def write_table(directory: Path | str, run_dirs: list[Path | str]) -> Path | str | None:
    """``table.md`` and ``table.json`` in ``directory`` from the evaluation runs among
    ``run_dirs`` (those with a ``summary.json``); None when there is none. Each may be a local
    path or an object-store URI (``runs.storage``)."""
    summaries = [s for d in run_dirs if (s := read_json(storage.join(d, "summary.json")))]
    summaries = [s for s in summaries if "model" in s and ("protocol" in s or "win_rate" in s)]
    if not summaries:
        return None
    table = build_table(summaries)
    save_json(storage.join(directory, "table.json"), table)
    path = storage.join(directory, "table.md")
    storage.write_bytes(path, (format_table(table) + "\n").encode("utf-8"))
    return path
