"""The main job through the real CLI, as a Hydra sweep with nothing allowed off the host.

One real run (issue #7, items 4-5, and the main job's CLI checks):
``moaa synth -m mixture=embedded,embedded_single_proposer`` on a file mixing good and bad
records, in its own process (file order: before the session cluster of the other integration
tests exists), inside a network namespace whose only way out is a dead end, with every Python
process (driver, Ray workers, Serve replicas, vLLM engine processes) loading the egress guard
(``no_egress/sitecustomize.py``). Two detectors, one for each layer:

- the guard records and refuses any Python socket ``connect``/``sendto`` to an address not on
  this host;
- the namespace has loopback plus a veth "sink" holding the default route, whose far end
  answers nothing. Any packet bound off the host, from any code (C extensions, DNS lookups),
  leaves through the sink and is counted in its TX packets.

The test asserts, for the default mixture's point, what the main job writes: TRL
conversational rows with their provenance, each bad record in ``rejects.jsonl`` with its
reason, the manifest, the summary line, the ``datasets`` view. For the sweep: its two run
directories and its summary, that each point started its own Ray and left no placement group
or process behind, and that both egress detectors stayed at zero. A first test proves that
each detector does fire on a real attempt. (One run for both: each real-stack CLI run costs
minutes of engine start and generation here.)
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

from tests.conftest import TELEMETRY_OFF

GUARD_DIR = Path(__file__).resolve().parent / "no_egress"
REPO = Path(__file__).resolve().parents[2]
# The bad-input corpus is a fault-injection fixture (tests/faults/README.md): raw bytes, with
# a sidecar listing each bad line's expected reject reason.
CORPUS = REPO / "tests" / "faults" / "fixtures" / "bad_inputs.jsonl"
EXPECTED = json.loads(CORPUS.with_name("bad_inputs.expected.json").read_text())
BAD = EXPECTED["bad"]
GOOD = 3  # good records in the corpus, one of them two turns
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
        "~dataset.sources.embedded_demo",
        f"+dataset.sources.fixture.path={CORPUS}",
        "dataset.name=fixture",
        "record_prompts=true",
        "mixture.sampling.max_tokens=32",
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
            "0-synth-embedded-fixture",
            {"smollm2-135m-instruct", "gemma-3-270m"},
        ),
        "mixture=embedded_single_proposer": (
            "1-synth-embedded_single_proposer-fixture",
            {"smollm2-135m-instruct"},
        ),
    }
    run_dirs = sorted(d.name for d in sweep.iterdir() if d.is_dir())
    assert run_dirs == sorted(name for name, _ in points.values())
    assert not (tmp_path / "outputs" / "synth-embedded-fixture").exists()
    # each point's summary counts both: good rows generated, bad records rejected
    line = f"rows: {GOOD} ok (1 multi-turn), 0 failed in inference, {len(BAD)} rejected on input"
    assert proc.stdout.count(line) == 2, proc.stdout[-3000:]
    manifests = {}
    for override, (name, models) in points.items():
        run = sweep / name
        rows = _sft_rows(run)
        assert len(rows) == GOOD and all(r["messages"][-1]["content"].strip() for r in rows)
        m = json.loads((run / "manifest.json").read_text())
        assert m["counts"]["rows_ok"] == GOOD and m["counts"]["rows_failed"] == 0
        assert m["counts"]["rejects_input"] == len(BAD)
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
    assert "dataset.name=fixture" in summary["common_overrides"]
    assert [p["point"] for p in summary["points"]] == [[o] for o in points]
    for p, m in zip(summary["points"], manifests.values(), strict=True):
        assert p["status"] == "ok" and p["counts"]["rows_ok"] == GOOD
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

    # --- what the main job wrote, for the default mixture's point --------------------------
    _check_main_job(sweep / points["mixture=embedded"][0])


def _sft_rows(run_dir: Path) -> list[dict]:
    """sft.parquet + sft_truncated.parquet: a row whose final answer stopped at max_tokens
    goes to the second (default ``truncated: exclude``)."""
    cut = run_dir / "sft_truncated.parquet"
    rows = pq.read_table(run_dir / "sft.parquet").to_pylist()
    return rows + (pq.read_table(cut).to_pylist() if cut.exists() else [])


def _check_main_job(run_dir: Path) -> None:
    """A `moaa synth` run of the embedded default on the bad-input corpus."""
    # --- SFT rows: TRL conversational format + provenance -------------------------------
    kept = pq.read_table(run_dir / "sft.parquet").to_pylist()
    cut_file = run_dir / "sft_truncated.parquet"
    cut = pq.read_table(cut_file).to_pylist() if cut_file.exists() else []
    rows = kept + cut
    assert len(rows) == GOOD and len({r["id"] for r in rows}) == GOOD
    for row, truncated in [(r, False) for r in kept] + [(r, True) for r in cut]:
        finals = [c for c in row["calls"] if c["layer"] == 1]
        assert row["truncated"] is truncated
        assert any(c["finish_reason"] == "length" for c in finals) is truncated
    for row in rows:
        users = [m for m in row["messages"] if m["role"] == "user"]
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(users)
        assert all(a["content"].strip() for a in assistants)
        n_turns = len(users)
        assert len(row["calls"]) == 3 * n_turns  # two proposers + aggregator per turn
        for t in range(n_turns):
            props = [c for c in row["calls"] if c["turn"] == t and c["layer"] == 0]
            (agg,) = [c for c in row["calls"] if c["turn"] == t and c["layer"] == 1]
            assert {c["model"] for c in props} == {"smollm2-135m-instruct", "gemma-3-270m"}
            assert agg["model"] == "smollm2-135m-instruct"
            assert assistants[t]["content"] == agg["text"]
            agg_messages = json.loads(agg["prompt"])
            system = agg_messages[0]
            assert system["role"] == "system"
            for i, p in enumerate(props, start=1):
                assert f"\n{i}. {p['text']}" in system["content"]  # every answer, numbered
            # the engine's own count: the aggregator prompt is at least as long as the answers
            assert agg["prompt_tokens"] > sum(p["completion_tokens"] for p in props)
            for c in row["calls"]:
                assert c["finish_reason"] in ("stop", "length")
                assert c["completion_tokens"] > 0
            if t == 1:  # Eq. 3: every seat of turn 2 sees turn 1's aggregated answer
                turn0_agg = next(c for c in row["calls"] if c["turn"] == 0 and c["layer"] == 1)
                for c in row["calls"]:
                    if c["turn"] == 1:
                        msgs = [m for m in json.loads(c["prompt"]) if m["role"] != "system"]
                        assert msgs[1] == {"role": "assistant", "content": turn0_agg["text"]}

    # --- rejects: each bad line with its reason; nothing lost ---------------------------
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == len(BAD)
    reasons = " | ".join(r["reason"] for r in rejects)
    for bad in BAD:  # each bad line once, at its own line, with its specific reason
        (hit,) = [r for r in rejects if bad["reason"] in r["reason"]]
        if bad["where"] is not None:
            assert hit["where"] == bad["where"], (bad, hit)
    assert "duplicate of bad_inputs.jsonl:1" in reasons  # names the line it repeats

    # --- manifest ----------------------------------------------------------------------
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == len(EXPECTED["good_lines"]) + len(BAD)
    assert manifest["timings_s"]["engine_start"] > 0
    assert manifest["models"]["smollm2_135m_instruct"]["checksums"]["model.safetensors"]
    assert manifest["versions"]["ray"] == "2.60.0"

    # --- loads with `datasets`, ablations derive without inference ----------------------
    import datasets

    files = [str(run_dir / "sft.parquet")] + ([str(cut_file)] if cut_file.exists() else [])
    ds = datasets.load_dataset("parquet", data_files=files, split="train")  # both files
    assert ds.num_rows == GOOD and ds[0]["messages"][0]["role"] == "user"
    assert sum(ds["truncated"]) == len(cut)
    # the same rows as parquet datasets (directories written by the Ray Data workers)
    for name, want in (("sft", kept), ("sft_truncated", cut)):
        if want:
            by_dir = datasets.load_dataset("parquet", data_dir=str(run_dir / name), split="train")
            assert sorted(by_dir["id"]) == sorted(r["id"] for r in want)
        elif name == "sft":  # none kept (short answers): still a dataset directory, no rows
            assert pq.read_table(run_dir / name).num_rows == 0  # (`datasets` refuses empty splits)
    assert (run_dir / "sft_truncated").is_dir() is bool(cut)
    from moaa_cluster.pipeline.derive import derive

    combined = derive(rows, "combined")
    assert len(combined) == 2 * GOOD and {r["teacher"] for r in combined} == {
        "smollm2-135m-instruct",
        "gemma-3-270m",
    }
