"""`ray job submit ... -- python -m ray_jobs.synth [overrides]`: runs `moaa synth` on the cluster."""

from ray_jobs.task import run

if __name__ == "__main__":
    run("synth")
