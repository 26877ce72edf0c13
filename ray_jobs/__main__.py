"""``python -m ray_jobs <task> [overrides]``: any ``moaa`` task as a Ray job entrypoint."""

import sys

from ray_jobs.task import run

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m ray_jobs <task> [options | hydra overrides]   (tasks: moaa --help)")
        sys.exit(0 if len(sys.argv) == 2 else 2)
    run(sys.argv[1], sys.argv[2:])
