"""`ray job submit ... -- python -m ray_jobs.eval [overrides]`: runs `moaa eval` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("eval")
