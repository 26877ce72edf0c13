"""The report's opening in plain words: what ran, how long, what came out, what it means."""

from __future__ import annotations

from pathlib import Path

from moaa_cluster.models.store import PACKAGED
from moaa_cluster.reporting.part import RunPart

TOY_SCALE = (
    "**What the numbers mean here.** The packaged toy models (135M-270M parameters) served this run, on a few dozen "
    "rows: the numbers show that every stage ran on real engines and trainers and wrote what the "
    "next stage reads. They say nothing about the method itself. A 135M model barely moves "
    "after a few optimizer steps, its judge is close to a coin flip, and win rates on a dozen "
    "questions carry intervals tens of points wide. The paper's gains come from 70B-class "
    "teachers, thousands of instructions and GPU-scale training (README: run the paper's "
    "configs on a cluster)."
)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _served_models(parts: list[RunPart]) -> set[str]:
    """Names of the models the inference stages served (a trained checkpoint has its own name,
    so training stages are left out)."""
    names = set()
    for part in (p for p in parts if p.kind != "train"):
        for rec in ((part.manifest or {}).get("models") or {}).values():
            if isinstance(rec, dict) and rec.get("name"):
                names.add(str(rec["name"]))
    return names


def _loss(part: RunPart) -> str | None:
    if len(part.losses) < 2:
        return None
    first, last = part.losses[0][1], part.losses[-1][1]
    trend = "down" if last < first else "up" if last > first else "flat"
    return f"loss {first:.3f} -> {last:.3f} over {len(part.losses)} logged steps ({trend})"


def _came_out(part: RunPart) -> str | None:
    counts = (part.manifest or {}).get("counts") or {}
    if part.kind == "synth":
        cut = counts.get("rows_truncated_excluded") or 0
        kept = counts.get("rows_sft", counts.get("rows_ok"))
        extra = f" ({cut} left out: final answer cut off at max_tokens)" if cut else ""
        return f"{kept} SFT conversations{extra}"
    if part.kind == "train":
        return _loss(part)
    if part.kind in ("prefs", "sample"):
        pairs = counts.get("pairs")
        return f"{pairs} preference pairs" if pairs is not None else None
    if part.kind == "eval" and part.win_rates:
        w = part.win_rates[0]
        ci = f" [{100 * w['low']:.0f}, {100 * w['high']:.0f}]" if w.get("low") is not None else ""
        return f"{w['label']}: {w.get('metric', 'win rate')} {100 * w['rate']:.1f}%{ci}"
    return None


def overview_lines(run_dir: Path, kind: str | None, parts: list[RunPart]) -> list[str]:
    """``## In short``: one line per stage (time, output), the total, what the numbers mean
    at this scale, and where the files are. Empty for anything but a pipeline run."""
    if kind != "pipeline" or not parts:
        return []
    lines = ["## In short", ""]
    total = 0.0
    for part in parts:
        wall = part.wall_s
        total += wall or 0.0
        out = _came_out(part)
        lines.append(
            f"- **{part.name}** ({part.kind}, {_minutes(wall)}): {out or 'see its section'}"
            f" -> `{part.path}`"
        )
    lines += ["", f"Stages took {_minutes(total)} in all (engine start-up included).", ""]
    served = _served_models(parts)
    if served & set(PACKAGED):
        lines += [TOY_SCALE, ""]
    lines += [f"Every file is under `{run_dir}`; each stage's `manifest.json` has its counts.", ""]
    return lines
