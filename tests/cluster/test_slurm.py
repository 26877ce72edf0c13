"""slurm/moaa.sbatch under a real single-node Slurm (scripts/ci_slurm.sh sets one up)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import ONE_ENGINE_SYNTH_ARGS, cmdline_pids, marked_pids, wait_until
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    shutil.which("sbatch") is None,
    reason="no sbatch on PATH: Slurm is not installed (run `bash scripts/ci_slurm.sh` as root)",
)
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(scope="module", autouse=True)
def slurm_node_idle():
    """Fails (not skips) when Slurm is installed but has no usable node: a broken setup."""
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    states = out.stdout.split()
    assert out.returncode == 0 and {"idle", "mixed"} & set(states), (
        f"sinfo: {out.stdout or out.stderr!r}; run `bash scripts/ci_slurm.sh` as root"
    )


def _sbatch(env: dict, log_dir: Path, *args: str) -> str:
    job_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    # the embedded default's actors reserve 8 logical CPUs; this node has 2 cores
    job_env["RAY_NUM_CPUS"] = "8"
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={log_dir}/slurm-%j.out", "slurm/moaa.sbatch", *args],
        cwd=REPO,
        env=job_env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _job_state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    state = re.search(r"JobState=(\S+)", out.stdout)
    code = re.search(r"ExitCode=(\S+)", out.stdout)
    return (state.group(1) if state else "UNKNOWN", code.group(1) if code else "?")


def _wait_done(job_id: str, timeout: float) -> tuple[str, str]:
    def done():
        state, code = _job_state(job_id)
        return (state, code) if state in DONE else None

    try:
        return wait_until(done, timeout=timeout, interval=3, what=f"Slurm job {job_id}")
    except BaseException:
        subprocess.run(["scancel", job_id])
        raise


def _assert_nothing_left(job_id: str) -> None:
    wait_until(lambda: not marked_pids(job_id), timeout=30, what=f"job {job_id}'s Ray to end")
    assert not cmdline_pids(f"/tmp/ray_{job_id}/"), "a process still uses the job's temp dir"


def test_sbatch_embedded_synth(ray_env, tmp_path: Path):
    job_id = _sbatch(ray_env, tmp_path, "synth", *ONE_ENGINE_SYNTH_ARGS)
    state, code = _wait_done(job_id, timeout=900)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (state, code) == ("COMPLETED", "0:0"), log[-5000:]

    # the script's steps, in order, with the job's own ports and temp dir
    for line in (
        f"job {job_id} on 1 node(s)",
        f"temp dir /tmp/ray_{job_id},",
        "Active:",
        f"ray job submit moaa-synth-{job_id}: python -m ray_jobs.synth "
        + " ".join(ONE_ENGINE_SYNTH_ARGS),
        "rows: 2 ok",
        f"Job 'moaa-synth-{job_id}' succeeded",
        "Ray job ended with exit 0",
        "stopping Ray on 1 node(s)",
        "done (exit 0)",
    ):
        assert line in log, f"{line!r} not in the job log:\n{log[-5000:]}"
    base = int(re.search(r"GCS 127\.0\.0\.1:(\d+)", log).group(1))
    assert base % 1000 == 0 and 20000 <= base < 60000
    assert "ending leftover Ray processes" not in log  # Ray stopped itself
    assert "task 0: Killed" not in log  # by SIGTERM to `ray start --block`, not SIGKILL to the step

    run_dir = Path(ray_env["MOAA_OUTPUT_ROOT"]) / "synth-embedded_single_proposer-embedded_demo"
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    assert len(rows) == 2 and all(r["messages"][-1]["content"] for r in rows)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["rows_ok"] == 2
    assert manifest["config"]["models_dir"] == ray_env["MOAA_MODELS_DIR"]
    (node_log,) = (Path(ray_env["MOAA_OUTPUT_ROOT"]) / f"slurm-{job_id}").glob("ray-*.log")
    node_text = node_log.read_text()
    assert "Ray runtime started" in node_text and "Traceback" not in node_text, node_text[-3000:]

    _assert_nothing_left(job_id)
    assert not Path(f"/tmp/ray_{job_id}").exists()  # removed after a successful run


def test_scancel_stops_job_and_ray(ray_env, tmp_path: Path):
    job_id = _sbatch(ray_env, tmp_path, "synth")  # the full demo set: still running when cancelled
    log_file = tmp_path / f"slurm-{job_id}.out"

    def driver_running():
        assert _job_state(job_id)[0] not in DONE, log_file.read_text()[-3000:]
        return log_file.exists() and "rows valid" in log_file.read_text()

    try:
        wait_until(driver_running, timeout=300, interval=2, what="the Ray job's driver to start")
    except BaseException:
        subprocess.run(["scancel", job_id])
        raise
    subprocess.run(["scancel", job_id], check=True)
    state, _ = _wait_done(job_id, timeout=120)
    log = log_file.read_text()
    assert state == "CANCELLED", log[-3000:]
    for line in (
        "got SIGTERM",
        f"stopping Ray job moaa-synth-{job_id}",
        "stopping Ray on 1 node(s)",
    ):
        assert line in log, log[-3000:]
    _assert_nothing_left(job_id)
    shutil.rmtree(f"/tmp/ray_{job_id}", ignore_errors=True)  # kept for debugging a failed run
