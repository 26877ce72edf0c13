"""`ray job submit ... -- python -m ray_jobs.train_dpo [overrides]`: runs `moaa train-dpo` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("train-dpo")
