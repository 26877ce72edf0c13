"""The cost table: tokens per model, wall time, GPU-hours and dollars per run part.

In the spirit of MoAA's cost comparison (arXiv 2505.03059, Tables 10-11): GPU-hours are wall
time x the GPUs of the run's cluster config, dollars come from prices per 1M tokens (and per
GPU-hour) when they are given.
"""

from __future__ import annotations

import json
from pathlib import Path

from moaa_cluster.reporting.part import RunPart


def load_prices(path: Path | None) -> dict:
    """Prices from a YAML/JSON file: ``{models: {name: {input, output}}, gpu_hour}``.

    Token prices are dollars per 1M tokens; ``models.default`` applies to unlisted models.
    """
    if path is None:
        return {}
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'models' and/or 'gpu_hour'")
    return data


def _price(prices: dict, model: str) -> dict | None:
    table = prices.get("models") or {}
    found = table.get(model) or table.get(model.split(":", 1)[-1]) or table.get("default")
    return found if isinstance(found, dict) else None


def cost_rows(parts: list[RunPart], prices: dict, gpu_hour_usd: float | None) -> list[dict]:
    """One row per (stage, model) with tokens and dollars, one per stage with time and GPUs."""
    rows = []
    gpu_price = gpu_hour_usd if gpu_hour_usd is not None else prices.get("gpu_hour")
    for s in parts:
        wall = s.wall_s
        gpu_h = None if wall is None or s.gpus is None else wall / 3600.0 * s.gpus
        usd_gpu = None if gpu_h is None or gpu_price is None else gpu_h * float(gpu_price)
        rows.append(
            {
                "stage": s.name,
                "model": "(stage)",
                "calls": None,
                "prompt_tokens": None,
                "completion_tokens": None,
                "wall_s": wall,
                "gpus": s.gpus,
                "gpu_hours": gpu_h,
                "usd": usd_gpu,
                "note": s.gpu_note,
            }
        )
        for model, t in s.tokens.items():
            p = _price(prices, model)
            usd = None
            if p is not None:
                usd = (
                    t["prompt_tokens"] * float(p.get("input", 0))
                    + t["completion_tokens"] * float(p.get("output", 0))
                ) / 1e6
            rows.append(
                {
                    "stage": s.name,
                    "model": model,
                    **t,
                    "wall_s": None,
                    "gpus": None,
                    "gpu_hours": None,
                    "usd": usd,
                    "note": "",
                }
            )
    return rows


def format_cost_table(rows: list[dict]) -> str:
    def f(v, fmt="{:,}") -> str:
        return "" if v is None else fmt.format(v)

    lines = [
        "| stage | model | calls | prompt tokens | generated tokens | wall s | GPUs | GPU-hours | $ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total = {"prompt_tokens": 0, "completion_tokens": 0, "gpu_hours": 0.0, "usd": 0.0}
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['model']} | {f(r['calls'])} | {f(r['prompt_tokens'])} | "
            f"{f(r['completion_tokens'])} | {f(r['wall_s'], '{:.1f}')} | "
            f"{f(r['gpus'], '{:g}')}{' (' + r['note'] + ')' if r['note'] else ''} | "
            f"{f(r['gpu_hours'], '{:.4f}')} | {f(r['usd'], '{:.4f}')} |"
        )
        for k in total:
            if r.get(k) is not None:
                total[k] += r[k]
    any_usd = any(r["usd"] is not None for r in rows)
    lines.append(
        f"| **total** | | | {total['prompt_tokens']:,} | {total['completion_tokens']:,} | | | "
        f"{total['gpu_hours']:.4f} | {f(total['usd'] if any_usd else None, '{:.4f}')} |"
    )
    return "\n".join(lines)
