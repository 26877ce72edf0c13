"""`ray job submit ... -- python -m ray_jobs.sample [overrides]`: runs `moaa sample` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("sample")
