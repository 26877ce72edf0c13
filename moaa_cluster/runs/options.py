"""How a task is run, as opposed to what it computes: the options every task takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.runs.storage import run_path


@dataclass(frozen=True)
class RunOptions:
    """Where a task writes and how it runs, built once by the CLI (or a test) for any task.

    Attributes:
        run_dir: The run directory (a path, or an object-store URI for synth); a rerun of
            the same directory resumes.
        cluster: The ``cluster`` config (Ray address, resources, runtime env).
        overwrite: Delete ``run_dir`` first instead of resuming it.
        limit: Read at most this many input records (None: all).
        progress: Show progress bars (off in tests and non-interactive logs if wanted).
        keep_engines: Leave the engines running at the end, for the next task to reuse.
        manifest_extra: Extra manifest fields (the resolved ``config``, ``rehearsal``).
    """

    run_dir: Path | str
    cluster: dict = field(default_factory=dict)
    overwrite: bool = False
    limit: int | None = None
    progress: bool = True
    keep_engines: bool = False
    manifest_extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a URI (object storage) stays a string: see runs.storage
        object.__setattr__(self, "run_dir", run_path(self.run_dir))
