"""A Hydra sweep of the embedded default with nothing allowed off the host (issue #7, items 4-5).

One real run: ``moaa synth -m mixture=embedded,embedded_single_proposer limit=2`` in its own
process, inside a network namespace whose only way out is a dead end, with every Python
process (driver, Ray workers, Serve replicas, vLLM engine processes) loading the egress guard
(``no_egress/sitecustomize.py``). Two detectors, one for each layer:

- the guard records and refuses any Python socket ``connect``/``sendto`` to an address not on
  this host;
- the namespace has loopback plus a veth "sink" holding the default route, whose far end
  answers nothing. Any packet bound off the host, from any code (C extensions, DNS lookups),
  leaves through the sink and is counted in its TX packets.

The test asserts the sweep's two run directories and its summary, that each point started
its own Ray and left no placement group or process behind, and that both egress detectors
stayed at zero. A first test proves that each detector does fire on a real attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq

GUARD_DIR = Path(__file__).resolve().parent / "no_egress"
REPO = Path(__file__).resolve().parents[2]
TELEMETRY_OFF = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "WANDB_MODE": "disabled",
}
# Runs as `sh -c SINK "$@"` inside the new namespace: loopback up, a veth whose far end is
# silent holds the default route; TX packets of the near end are counted around the command.
# addrgenmode none: no IPv6 link-local chatter that would count as traffic.
SINK = r"""
set -eu
ip link set lo up
ip link add moaa-sink type veth peer name moaa-peer
ip link set moaa-sink addrgenmode none
ip link set moaa-peer addrgenmode none
ip addr add 10.77.0.1/24 dev moaa-sink
ip link set moaa-sink up
ip link set moaa-peer up
ip route add default via 10.77.0.2 dev moaa-sink
tx() { sed 's/:/ /' /proc/net/dev | awk '$1 == "moaa-sink" {print $11}'; }
before=$(tx)
set +e
"$@"
rc=$?
after=$(tx)
printf '{"tx_before": %s, "tx_after": %s}\n' "$before" "$after" > "$MOAA_SINK_COUNTS"
exit $rc
"""


def _netns_prefix() -> list[str] | None:
    """``unshare`` arguments that give a new network namespace where veths can be made."""
    probe = ["sh", "-c", "ip link add t0 type veth peer name t1"]
    for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
        try:
            if subprocess.run([*prefix, *probe], capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _guarded_env(log: Path, models_dir: Path | None = None) -> dict[str, str]:
    """The caller's environment minus anything that would pre-decide the run's own settings."""
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}
    for key in ("RAY_ADDRESS", "VLLM_HOST_IP", "PYTHONPATH"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(GUARD_DIR)
    env["MOAA_EGRESS_LOG"] = str(log)
    if models_dir is not None:
        env["MOAA_MODELS_DIR"] = str(models_dir)
    return env


def _run_isolated(cmd: list[str], env: dict, tmp: Path, timeout: float):
    """Runs ``cmd`` in the sink namespace (or guarded only, if none can be made).

    Returns:
        ``(completed process, {"tx_before", "tx_after"} or None)``.
    """
    prefix = _netns_prefix()
    if prefix is None:
        warnings.warn(
            "no network namespace here: only the Python egress guard is active", stacklevel=2
        )
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp
        )
        return proc, None
    counts = tmp / "sink.json"
    proc = subprocess.run(
        [*prefix, "sh", "-c", SINK, "sh", *cmd],
        env={**env, "MOAA_SINK_COUNTS": str(counts)},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    return proc, (json.loads(counts.read_text()) if counts.exists() else None)


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _guarded_processes(log: Path) -> dict[int, str]:
    """Live processes that carry this run's guard log in their environment: pid -> cmdline."""
    marker = f"MOAA_EGRESS_LOG={log}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
    return {pid: cmd.decode(errors="replace")[:200] for pid, cmd in found.items()}


GUARD_PROBE = """
import socket, _socket
try:
    socket.create_connection(("203.0.113.7", 9), timeout=3)
    print("NOT REFUSED")
except OSError as exc:
    print("refused", exc.errno)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
socket.create_connection(srv.getsockname(), timeout=3).close()
socket.create_connection(("localhost", srv.getsockname()[1]), timeout=3).close()
print("loopback ok")
raw = _socket.socket(); raw.settimeout(3)   # C-level, under the guard: only the sink sees it
try:
    _socket.socket.connect(raw, ("203.0.113.7", 9))
except OSError:
    pass
try:
    socket.getaddrinfo("egress-probe.invalid", 80)   # a DNS query: recorded, not refused
except OSError:
    print("lookup failed")
"""


def test_egress_detectors_fire_on_a_real_attempt(tmp_path: Path):
    """Without this, zero recorded attempts below could mean a blind guard."""
    log = tmp_path / "egress.jsonl"
    env = {**_guarded_env(log), "RES_OPTIONS": "timeout:1 attempts:1"}  # a quick DNS give-up
    proc, sink = _run_isolated([sys.executable, "-c", GUARD_PROBE], env, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused 101" in proc.stdout and "loopback ok" in proc.stdout, proc.stdout
    assert "lookup failed" in proc.stdout, proc.stdout
    egress = [r for r in _records(log) if r["event"] == "egress"]
    assert [(r["kind"], r["address"]) for r in egress] == [
        ("connect", ["203.0.113.7", 9]),
        ("resolve", ["egress-probe.invalid", None]),
    ]
    if sink is not None:  # the guard-bypassing connect left through the sink
        assert sink["tx_after"] > sink["tx_before"], sink


def test_two_point_sweep_runs_clean_and_offline(tmp_path: Path, models_dir: Path):
    log = tmp_path / "egress.jsonl"
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "moaa_cluster.cli",
        "synth",
        "-m",
        "mixture=embedded,embedded_single_proposer",
        "limit=2",
        "mixture.sampling.max_tokens=32",
        "truncated=keep",  # at 32 tokens most answers are cut off: keep them, the test counts rows
        f"output_root={tmp_path / 'outputs'}",
        f"hydra.sweep.dir={sweep}",
        "progress=false",
    ]
    t0 = time.monotonic()
    proc, sink = _run_isolated(cmd, _guarded_env(log, models_dir), tmp_path, timeout=1500)
    wall = time.monotonic() - t0
    print(f"\n2-point sweep under the egress guard: {wall:.0f} s wall", flush=True)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # --- two run directories, one per point, inside the sweep directory ------------------
    points = {
        "mixture=embedded": (
            "0-synth-embedded-embedded_demo",
            {"smollm2-135m-instruct", "gemma-3-270m"},
        ),
        "mixture=embedded_single_proposer": (
            "1-synth-embedded_single_proposer-embedded_demo",
            {"smollm2-135m-instruct"},
        ),
    }
    run_dirs = sorted(d.name for d in sweep.iterdir() if d.is_dir())
    assert run_dirs == sorted(name for name, _ in points.values())
    assert not (tmp_path / "outputs" / "synth-embedded-embedded_demo").exists()
    manifests = {}
    for override, (name, models) in points.items():
        run = sweep / name
        rows = pq.read_table(run / "sft.parquet").to_pylist()
        assert len(rows) == 2 and all(r["messages"][-1]["content"].strip() for r in rows)
        m = json.loads((run / "manifest.json").read_text())
        assert m["counts"]["rows_ok"] == 2 and m["counts"]["rows_failed"] == 0
        assert set(m["counts"]["tokens_per_model"]) == models  # the point's own mixture ran
        assert m["config"]["output_dir"] == str(run)
        assert not any(s["trust_remote_code"] for s in m["models"].values())
        manifests[override] = m

    # --- each point started its own Ray and engines and released all of it ---------------
    rays = [m["ray"] for m in manifests.values()]
    for m, r in zip(manifests.values(), rays, strict=True):
        assert r["started_by_run"] is True and r["ray"] == "shut down", r
        assert r["placement_groups_left"] == [], r
        assert m["timings_s"]["engine_start"] > 5  # engines started anew, not reused
    assert rays[0]["engines_deleted"] == ["moaa-gemma-3-270m", "moaa-smollm2-135m-instruct"]
    assert rays[1]["engines_deleted"] == ["moaa-smollm2-135m-instruct"]
    assert rays[0]["session_dir"] != rays[1]["session_dir"]
    deadline = time.monotonic() + 60
    while (left := _guarded_processes(log)) and time.monotonic() < deadline:
        time.sleep(2)
    assert left == {}, f"processes of the sweep still running: {left}"

    # --- the summary across points -------------------------------------------------------
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["task"] == "synth"
    assert "limit=2" in summary["common_overrides"]
    assert [p["point"] for p in summary["points"]] == [[o] for o in points]
    for p, m in zip(summary["points"], manifests.values(), strict=True):
        assert p["status"] == "ok" and p["counts"]["rows_ok"] == 2
        used = m["counts"]["tokens_per_model"].values()
        assert p["tokens"] == {
            "prompt": sum(t["prompt_tokens"] for t in used),
            "completion": sum(t["completion_tokens"] for t in used),
        }
        assert p["tokens"]["completion"] > 0
        assert p["wall_s"] == m["timings_s"]["total"]
        assert p["ray"]["placement_groups_left"] == []
    md = (sweep / "summary.md").read_text()
    assert md in proc.stdout
    for override, (name, _) in points.items():
        assert any(override in line and name in line for line in md.splitlines())

    # --- nothing tried to leave the host -------------------------------------------------
    records = _records(log)
    egress = [r for r in records if r["event"] == "egress"]
    assert egress == [], json.dumps(egress, indent=1)[:4000]
    if sink is not None:  # None: no namespace could be made here (a warning says so)
        assert sink["tx_after"] == sink["tx_before"], f"packets left through the sink: {sink}"

    # --- and every process of the run, not just the driver, ran offline ------------------
    starts = [r for r in records if r["event"] == "start"]
    (driver,) = [r for r in starts if "moaa_cluster.cli" in r["cmdline"]]
    children = [r for r in starts if r["pid"] != driver["pid"]]
    commands = [" ".join(r["cmdline"]) for r in children]
    assert any("default_worker.py" in c for c in commands), commands  # Ray workers
    assert any("multiprocessing" in c for c in commands), commands  # vLLM engine processes
    for r in children:
        assert r["env"] == TELEMETRY_OFF, (r["cmdline"][:3], r["env"])
    # the dashboard is off, so Ray's API server (which probes cloud metadata) never started
    assert not any("dashboard/dashboard.py" in c for c in commands), commands
