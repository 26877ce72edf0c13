"""`ray job submit ... -- python -m ray_jobs.judge_eval [overrides]`: runs `moaa judge-eval` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("judge-eval")
