"""`ray job submit ... -- python -m ray_jobs.pipeline [overrides]`: runs `moaa pipeline` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("pipeline")
