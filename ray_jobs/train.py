"""`ray job submit ... -- python -m ray_jobs.train sft|dpo [overrides]`: `moaa train-sft|train-dpo`."""

import sys

from ray_jobs.task import run

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("sft", "dpo"):
        print("usage: python -m ray_jobs.train sft|dpo [hydra overrides]", file=sys.stderr)
        sys.exit(2)
    run(f"train-{sys.argv[1]}", sys.argv[2:])
