"""`ray job submit ... -- python -m ray_jobs.train_sft [overrides]`: runs `moaa train-sft` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("train-sft")
