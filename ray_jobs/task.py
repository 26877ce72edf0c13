"""The one function every ``ray_jobs.<task>`` module calls: forward argv to ``moaa <task>``."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def run(task: str, argv: list[str] | None = None) -> NoReturn:
    """Runs ``moaa <task> *argv`` in this process and exits with its status.

    Args:
        task: A ``moaa`` task name (``synth``, ``prefs``, ``train-sft``, ...).
        argv: Options and Hydra overrides; defaults to ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our cluster configs add env vars (engine settings, offline flags) to the driver's
    # runtime_env; Ray refuses to merge those with the job's runtime_env env_vars when keys
    # repeat (even with equal values) unless told the driver's value wins.
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if not _output_location_given(argv) and not _only_prints(argv):
        print(
            f"ray_jobs.{task}: warning: no output_root=, output_dir= or MOAA_OUTPUT_ROOT: "
            f"outputs go under {os.getcwd()}, which for `ray job submit --working-dir` is the "
            "job's temporary copy of that directory",
            file=sys.stderr,
        )
    from moaa_cluster.cli import main

    sys.exit(main([task, *argv]))


def _only_prints(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help", "--cfg", "-c", "--info", "--hydra-help") for arg in argv)


def _output_location_given(argv: list[str]) -> bool:
    if os.environ.get("MOAA_OUTPUT_ROOT"):
        return True
    keys = ("output_root=", "output_dir=", "++output_root=", "++output_dir=")
    return any(arg.startswith(keys) for arg in argv)
