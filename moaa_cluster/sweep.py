"""Hydra multirun sweeps: one run directory per point and a summary table across points.

``moaa <task> -m mixture=a,b judge.criteria_filtering=true,false`` runs every point in this
process, one after the other (Hydra's basic launcher). Each point gets its own run directory,
Hydra's job directory ``<sweep dir>/<num>-<run_name>``, so points that share a ``run_name``
(a seed or DPO-beta sweep) never resume each other's rows; each point starts its own Ray and
engines and ends with them shut down (``engines.host.engines``).

:class:`SweepSummary` is the Hydra callback that every task config lists under
``hydra.callbacks``. After each point it reads the point's ``manifest.json`` and rewrites
``summary.md`` and ``summary.json`` in the sweep directory (so a sweep stopped half-way still
has the table of the points that finished); at the end it prints the table. It knows no task:
it shows the numbers any manifest carries (``counts``, ``metrics``, ``losses``, ``summary``,
``timings_s``), so new tasks appear in it by writing a manifest.

With ``output_root`` on object storage, Hydra's own files stay in a local directory and each
point's run directory and the summary go under the URI (``runs.sweep_dirs``).

This module is imported for every Hydra task (callbacks are built in single runs too): keep
its imports light.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from moaa_cluster.runs.sweep_dirs import join, point_dir, resolved

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary"
MANIFEST = "manifest.json"
METRIC_SECTIONS = ("metrics", "losses", "summary")  # manifest parts whose numbers are shown


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flat_numbers(prefix: str, value: object, depth: int = 3) -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``{"a.b": 1.0}`` (``depth`` levels at most)."""
    if _is_number(value):
        return {prefix: value}
    out: dict[str, float] = {}
    if isinstance(value, Mapping) and depth > 0:
        for key, sub in value.items():
            out.update(_flat_numbers(f"{prefix}.{key}" if prefix else str(key), sub, depth - 1))
    return out


def token_totals(counts: object) -> dict[str, int] | None:
    """Sums every ``prompt_tokens`` / ``completion_tokens`` count found in ``counts``.

    Manifests report tokens per model (synth, eval) or per judge (prefs); the sum is the work
    a point did, whatever the task.

    Returns:
        ``{"prompt": n, "completion": m}``, or ``None`` when ``counts`` reports no tokens.
    """
    totals = {"prompt": 0, "completion": 0}
    found = False

    def walk(node: object) -> None:
        nonlocal found
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("prompt_tokens", "completion_tokens") and _is_number(value):
                    totals[key.split("_")[0]] += int(value)
                    found = True
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(counts)
    return totals if found else None


def read_manifest(run_dir: Path | str) -> dict | None:
    """The point's ``manifest.json`` (local or a URI), or ``None`` if it is missing or
    unreadable."""
    from moaa_cluster.runs.files import read_json

    return read_json(join(run_dir, MANIFEST))


def point_record(
    num: int,
    overrides: Iterable[str],
    run_dir: Path | str,
    *,
    status: str = "COMPLETED",
    error: str | None = None,
    manifest: dict | None = None,
) -> dict[str, Any]:
    """One row of the summary: what a sweep point was and what its manifest reports.

    Args:
        num: Hydra's job number within the sweep.
        overrides: The point's task overrides (``key=value`` strings).
        run_dir: The point's run directory (a path or a URI).
        status: ``COMPLETED`` or ``FAILED`` (Hydra's job status).
        error: The failure, one line, for a failed point.
        manifest: The point's manifest; read from ``run_dir`` when not given.
    """
    if manifest is None:
        manifest = read_manifest(run_dir)
    rec: dict[str, Any] = {
        "num": int(num),
        "overrides": [str(o) for o in overrides],
        "status": "ok" if status == "COMPLETED" else "failed",
        "error": error,
        "output_dir": str(run_dir),
        "manifest": str(join(run_dir, MANIFEST)) if manifest is not None else None,
        "task": None,
        "counts": {},
        "metrics": {},
        "tokens": None,
        "wall_s": None,
        "ray": None,
    }
    if manifest is None:
        if rec["status"] == "ok":
            rec["status"] = "no manifest"
        return rec
    counts = manifest.get("counts") or {}
    rec["task"] = manifest.get("task")
    rec["counts"] = (
        {k: v for k, v in counts.items() if _is_number(v)} if isinstance(counts, Mapping) else {}
    )
    for section in METRIC_SECTIONS:
        rec["metrics"].update(_flat_numbers(section, manifest.get(section)))
    rec["tokens"] = token_totals(counts)
    timings = manifest.get("timings_s") or {}
    if isinstance(timings, Mapping):
        if _is_number(timings.get("total")):
            rec["wall_s"] = float(timings["total"])
        elif timings:
            rec["wall_s"] = float(sum(v for v in timings.values() if _is_number(v)))
    rec["ray"] = manifest.get("ray")
    if manifest.get("status") not in (None, "complete") and rec["status"] == "ok":
        rec["status"] = str(manifest["status"])
    return rec


def _union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in keys:
        for key in group:
            seen.setdefault(key, None)
    return list(seen)


def build_summary(
    points: list[dict], *, sweep_dir: Path | str | None = None, task: str | None = None
) -> dict:
    """The table across sweep points: what differs between them and what each produced.

    Overrides shared by every point are listed once (``common_overrides``); each point keeps
    the ones that make it different (``point``). Columns are the union of the points' counts
    and metrics, in the order they first appear.
    """
    points = sorted(points, key=lambda p: p["num"])
    if len(points) > 1:
        common = [o for o in points[0]["overrides"] if all(o in p["overrides"] for p in points)]
    else:
        common = []
    rows = []
    for p in points:
        rows.append({**p, "point": [o for o in p["overrides"] if o not in common]})
    return {
        "task": task or next((p["task"] for p in points if p.get("task")), None),
        "sweep_dir": str(sweep_dir) if sweep_dir is not None else None,
        "common_overrides": common,
        "count_columns": _union(p["counts"] for p in points),
        "metric_columns": _union(p["metrics"] for p in points),
        "points": rows,
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _cleanup_cell(ray_report: object) -> str:
    if not isinstance(ray_report, Mapping) or "placement_groups_left" not in ray_report:
        return "-"
    left = ray_report.get("placement_groups_left") or []
    return "clean" if not left else f"{len(left)} PGs left"


def format_markdown(summary: dict) -> str:
    """``summary.md``: a heading, the shared overrides, and one table row per point."""
    task = summary.get("task") or "task"
    points = summary["points"]
    lines = [f"# Sweep of `moaa {task}`: {len(points)} point(s)", ""]
    if summary.get("sweep_dir"):
        lines.append(f"sweep directory: `{summary['sweep_dir']}`")
    if summary["common_overrides"]:
        lines.append("every point: `" + " ".join(summary["common_overrides"]) + "`")
    lines.append("")
    counts, metrics = summary["count_columns"], summary["metric_columns"]
    header = [
        "#",
        "point",
        "status",
        *counts,
        *metrics,
        "prompt tokens",
        "generated tokens",
        "wall s",
        "ray cleanup",
        "output",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    prefix = summary["sweep_dir"].rstrip("/") + "/" if summary.get("sweep_dir") else None
    for p in points:
        out = str(p["output_dir"])  # shown relative to the sweep directory when inside it
        if prefix is not None and out.startswith(prefix):
            out = out[len(prefix) :]
        tokens = p.get("tokens") or {}
        status = p["status"] if not p.get("error") else f"{p['status']}: {p['error']}"
        cells = [
            p["num"],
            " ".join(p["point"]) or "(defaults)",
            status,
            *(p["counts"].get(c) for c in counts),
            *(p["metrics"].get(c) for c in metrics),
            tokens.get("prompt"),
            tokens.get("completion"),
            p.get("wall_s"),
            _cleanup_cell(p.get("ray")),
            out,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    sweep_dir: Path | str, summary: dict, name: str = SUMMARY_NAME
) -> tuple[Path | str, Path | str]:
    """Writes ``<name>.md`` and ``<name>.json`` into ``sweep_dir`` (local or a URI), each
    whole (``runs.storage.write_bytes``)."""
    from moaa_cluster.runs.storage import run_path, write_bytes

    sweep_dir = run_path(sweep_dir)
    paths = (join(sweep_dir, f"{name}.md"), join(sweep_dir, f"{name}.json"))
    for path, text in zip(
        paths, (format_markdown(summary), json.dumps(summary, indent=2, default=str)), strict=True
    ):
        write_bytes(path, text.encode())
    return paths


# --- the Hydra side -------------------------------------------------------------------------

_CLAIMED: dict[str, int] = {}  # run directory -> sweep point that writes it (this process)


def _user_set(overrides: Iterable[str], key: str) -> bool:
    return any(str(o).lstrip("+~").split("=", 1)[0] == key for o in overrides)


def use_point_dir(cfg) -> None:
    """In a multirun, points the task's ``output_dir`` at the point's own directory.

    The point directory is Hydra's job directory (``hydra.sweep.dir``/``hydra.sweep.subdir``),
    or its place under ``output_root`` when that is a URI (:func:`point_dir`), unless the
    user set ``output_dir`` on the command line. Two points of one sweep writing
    the same directory would resume each other's rows, so that is refused.

    Raises:
        ConfigError: Two points of this sweep resolve to the same run directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from moaa_cluster.errors import ConfigError

    if not HydraConfig.initialized() or "output_dir" not in cfg:
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    if not _user_set(hc.overrides.task, "output_dir"):
        with open_dict(cfg):
            cfg.output_dir = str(point_dir(hc.runtime.output_dir, cfg.get("output_root")))
    run_dir = str(resolved(str(cfg.output_dir)))
    num = int(hc.job.num)
    other = _CLAIMED.setdefault(run_dir, num)
    if other != num:
        raise ConfigError(
            f"sweep points {other} and {num} both write {run_dir}: leave output_dir unset in a "
            "sweep (each point gets its own directory) or make it depend on the swept keys"
        )


class SweepSummary(Callback):
    """Hydra callback: ``summary.md`` / ``summary.json`` across the points of a multirun.

    Listed in every task config::

        hydra:
          callbacks:
            sweep_summary:
              _target_: moaa_cluster.sweep.SweepSummary

    Args:
        name: Base name of the two files written into the sweep directory.
        echo: Print the table when the sweep ends.
    """

    def __init__(self, name: str = SUMMARY_NAME, echo: bool = True) -> None:
        self.name = name
        self.echo = echo
        self.points: dict[int, dict] = {}
        self.sweep_dir: Path | str | None = None
        self.task: str | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.points = {}
        self.sweep_dir = self._sweep_dir(config)
        self.task = config.get("task")
        _CLAIMED.clear()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if self.sweep_dir is None:
            self.sweep_dir = self._sweep_dir(config)
        task_cfg = job_return.cfg if job_return.cfg is not None else config
        run_dir = task_cfg.get("output_dir") or config.hydra.runtime.output_dir
        status = getattr(job_return.status, "name", str(job_return.status))
        error = None
        if status != "COMPLETED":
            exc = job_return._return_value  # .return_value would re-raise it here
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        num = int(config.hydra.job.num)
        self.points[num] = point_record(
            num,
            job_return.overrides or [],
            resolved(str(run_dir)),
            status=status,
            error=error,
        )
        md, _ = write_summary(self.sweep_dir, self._summary(), self.name)
        self._eval_table()
        if error:
            log.error("sweep point %d failed (%s); summary so far: %s", num, error, md)

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.sweep_dir is None or not self.points:
            return
        summary = self._summary()
        md, js = write_summary(self.sweep_dir, summary, self.name)
        if self.echo:
            print("\n" + format_markdown(summary), flush=True)
            print(f"sweep summary: {md} (and {posixpath.basename(str(js))})", flush=True)
            table = self._eval_table()
            if table is not None:
                from moaa_cluster.runs.storage import read_bytes

                text = (read_bytes(table) or b"").decode()
                print("\n" + text + f"table: {table} (and table.json)", flush=True)

    @staticmethod
    def _sweep_dir(config) -> Path | str:
        """The sweep directory the summary goes to: Hydra's, or its place under a URI
        ``output_root``."""
        return point_dir(str(config.hydra.sweep.dir), config.get("output_root"))

    def _eval_table(self) -> Path | str | None:
        """An eval sweep (``-m protocol=... model=...``) also gets the paper-style table."""
        if self.task != "eval":
            return None
        from moaa_cluster.evaluation.table import write_table

        dirs = [resolved(p["output_dir"]) for p in self.points.values() if p["status"] == "ok"]
        return write_table(self.sweep_dir, dirs)

    def _summary(self) -> dict:
        return build_summary(list(self.points.values()), sweep_dir=self.sweep_dir, task=self.task)
