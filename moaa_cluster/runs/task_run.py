"""A task's run in progress: its directory, the rows left to do, its wall times, its manifest.

Every row task (synth, prefs, sample, judge-eval) starts the same way (open the run directory;
the rows an earlier run of it finished are dropped by its Ray Data read) and ends the same way (rewrite ``rejects.jsonl``,
save the manifest with the task's details, the Ray report and the invocation's
``manifest_extra``); :class:`TaskRun` is that shared part, the task keeps what it computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.runs import storage
from moaa_cluster.runs.files import write_jsonl
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import open_run

REJECTS = "rejects.jsonl"


def write_rejects(run_dir: Path | str, *groups: list[dict]) -> Path | str:
    """Replaces ``<run_dir>/rejects.jsonl`` with the records of ``groups``, in order.

    The file exists afterwards even when nothing was rejected (summaries name it).
    """
    path = storage.join(run_dir, REJECTS)
    write_jsonl(path, (r for records in groups for r in records))
    return path


@dataclass
class TaskRun:
    """One run of a task, from opening its directory to saving its manifest.

    Attributes:
        opts: The run options the task was called with.
        run_dir: The opened run directory.
        started: ``time.monotonic()`` when the run started.
        timings: Wall time per step (seconds); the engine context managers add theirs.
        ray: Ray session, engines released, placement groups left (``engines.host.engines``).
    """

    opts: RunOptions
    run_dir: Path | str
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    ray: dict = field(default_factory=dict)

    @classmethod
    def open(cls, opts: RunOptions, specs) -> TaskRun:
        """Starts the clock and readies ``opts.run_dir`` (``runs.shards.open_run``)."""
        started = time.monotonic()
        run_dir = open_run(opts.run_dir, specs, overwrite=opts.overwrite)
        return cls(opts, run_dir, started)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def save_manifest(self, task: str, counts: dict, models: dict, details: dict) -> dict:
        """Saves the manifest; returns what it wrote.

        ``timings["total"]`` is set now unless the task set it (for a file it wrote first).
        ``details`` are the task's own fields; the Ray report and the invocation's
        ``manifest_extra`` follow them.
        """
        self.timings.setdefault("total", self.elapsed())
        return Manifest(
            task=task,
            counts=counts,
            timings_s=self.timings,
            models=models,
            details={**details, "ray": self.ray or None, **self.opts.manifest_extra},
        ).save(self.run_dir)
