"""`ray job submit ... -- python -m ray_jobs.prefs [overrides]`: runs `moaa prefs` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("prefs")
