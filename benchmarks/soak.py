"""Does anything grow over a long run? Memory of every process of ``moaa synth`` over time.

    python -m benchmarks.soak                          # 300 rows, max_tokens 24, a sample every 5 s
    python -m benchmarks.soak --rows 8 --interval 2    # a smoke run
    python -m benchmarks.soak -o cluster.workers=4     # any Hydra override of `moaa synth`
    python -m benchmarks.soak --reanalyse benchmarks/results/soak-serve.json   # no run

Runs ``moaa synth`` itself (a subprocess: the product path with its own local Ray, Serve LLM
engines and Ray Data stage) on ``--rows`` MT-Bench first turns. The 80 questions repeat as
extra sources (``mt_bench``, ``mt_bench_r1``, ...), so a repeat has its own id and sampling
seeds, as ``harness.first_turn_rows`` gives them. While it runs, a sampler in this process
walks the process tree of that ``moaa synth`` every ``--interval`` seconds and records RSS
and USS (``/proc/<pid>/smaps``) of each process, summed by role:

    driver          the ``moaa synth`` process (Ray Data's executor runs in it)
    engine_replica  Ray Serve LLM replica actors (``ray::ServeReplica:...``), one per engine
    engine_core     vLLM's engine-core processes under them (``VLLM::EngineCore``)
    engine_worker   their model-runner processes (``VLLM::Worker``: the weights, the KV cache)
    data_worker     the Ray Data actors running rows through the mixture (``MapWorker``)
    serve           Serve's controller
    ray_worker      any other Ray worker process (idle workers, Ray Data's helper actors)
    raylet, gcs_server, ray_other   Ray's system processes (ray_other: agents, monitors)

and the rows finished so far (rows in the run directory's ``shards/``).

Analysis (``analyse``), per role and for all roles together, over the generation window (the
samples from the first with a finished row to the last before every row is finished: engine
start-up is left out, and so is shutdown, which begins as soon as the last rows are written):
the median of the first and the last quarter of those samples, and the least-squares slope of
memory against rows finished, in MiB per 100 rows.
**A role grows when its RSS slope exceeds 2% (``--threshold-pct``) of its first-quarter
median per 100 rows**: a leak that small would still double a process within 5,000 rows.
Writes ``benchmarks/results/soak-serve.json`` and prints one line. 300 rows take ~8 minutes
on the 2-core CPU machine (engine start-up included). Prefix caching stays on, as in any
``moaa synth``: a repeated question's prompt may hit the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness

MIB = 2**20
THRESHOLD_PCT = 2.0
ROLES = (
    "driver",
    "engine_replica",
    "engine_core",
    "engine_worker",
    "data_worker",
    "serve",
    "ray_worker",
    "raylet",
    "gcs_server",
    "ray_other",
)


def role_of(title: str, name: str) -> str:
    """The role of a descendant of the driver from its process title (cmdline) and name."""
    if name.startswith("gcs_server") or "/gcs_server" in title.split(" ", 1)[0]:
        return "gcs_server"
    if name.startswith("raylet") or "/raylet" in title.split(" ", 1)[0]:
        return "raylet"
    if title.startswith("VLLM::EngineCore"):
        return "engine_core"
    if title.startswith("VLLM::"):
        return "engine_worker"
    if title.startswith("ray::ServeReplica"):
        return "engine_replica"
    if title.startswith("ray::ServeController"):
        return "serve"
    if title.startswith("ray::") and ("MapWorker" in title or "MixtureWorker" in title):
        return "data_worker"
    if title.split(" ", 1)[0] in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        return "ray_other"  # the raylet's agents (Serve LLM's TelemetryAgent is an actor)
    if title.startswith("ray::"):
        return "ray_worker"
    return "ray_other"


# ---------------------------------------------------------------------------------------------
# analysis (pure)


def _fit_slope(xs: list[float], ys: list[float]) -> float | None:
    try:
        return harness.linear_fit(xs, ys)["slope"]
    except ValueError:  # fewer than two points, or no rows finished in between
        return None


def analyse_series(
    rows: list[float], values: list[float], threshold_pct: float = THRESHOLD_PCT
) -> dict:
    """First/last-quarter medians, slope per 100 rows and a verdict for one memory series.

    ``rows`` and ``values`` (MiB) are the samples of the generation window, in time order.
    Verdict: ``grows`` when the slope exceeds ``threshold_pct`` % of the first-quarter median
    per 100 rows, ``steady`` when not, ``unknown`` when the window is too short for a slope.
    """
    if len(rows) != len(values):
        raise ValueError("rows and values differ in length")
    if not values:
        return {"samples": 0, "verdict": "unknown"}
    q = max(1, len(values) // 4)
    first, last = statistics.median(values[:q]), statistics.median(values[-q:])
    slope = _fit_slope(rows, values)
    out = {
        "samples": len(values),
        "first_quarter_mib": round(first, 1),
        "last_quarter_mib": round(last, 1),
        "last_vs_first_pct": round(100 * (last - first) / first, 2) if first else None,
        "slope_mib_per_100_rows": None,
        "slope_pct_per_100_rows": None,
        "verdict": "unknown",
    }
    if slope is not None:
        per_100 = 100 * slope
        out["slope_mib_per_100_rows"] = round(per_100, 2)
        if first:
            pct = 100 * per_100 / first
            out["slope_pct_per_100_rows"] = round(pct, 2)
            out["verdict"] = "grows" if pct > threshold_pct else "steady"
    return out


def generation_window(samples: list[dict], total_rows: int) -> list[dict]:
    """The samples with some rows finished but not all: ``moaa synth`` deletes its engines as
    soon as the last rows are written, so a sample showing every row may catch the shutdown."""
    return [s for s in samples if 0 < s["rows"] < total_rows]


def analyse(samples: list[dict], total_rows: int, threshold_pct: float = THRESHOLD_PCT) -> dict:
    """Per role (and ``all``): RSS and USS analysed over the generation window.

    ``samples``: ``{"t", "rows", "roles": {role: {"rss_mib", "uss_mib", "procs"}}}`` in time
    order. A role absent from a sample counts as 0 MiB there; a change in its process count
    inside the window is reported (``procs_changed``): an engine restarted, or a worker added.
    """
    window = generation_window(samples, total_rows)
    roles = sorted({r for s in window for r in s["roles"]}, key=_role_order)
    xs = [float(s["rows"]) for s in window]
    out: dict = {}
    for role in [*roles, "all"]:
        rec: dict = {}
        for metric in ("rss_mib", "uss_mib"):
            ys = [_value(s, role, metric) for s in window]
            if any(y is None for y in ys):
                continue
            rec[metric.removesuffix("_mib")] = analyse_series(xs, ys, threshold_pct)
        if role != "all":
            procs = {s["roles"].get(role, {}).get("procs", 0) for s in window}
            rec["procs"] = sorted(procs)
            rec["procs_changed"] = len(procs) > 1
        rec["verdict"] = rec.get("rss", {}).get("verdict", "unknown")
        out[role] = rec
    grows = [r for r in roles if out[r]["verdict"] == "grows"]
    return {
        "window": {
            "samples": len(window),
            "from_s": window[0]["t"] if window else None,
            "to_s": window[-1]["t"] if window else None,
            "from_rows": window[0]["rows"] if window else None,
            "to_rows": window[-1]["rows"] if window else None,
        },
        "threshold_pct_per_100_rows": threshold_pct,
        "roles": out,
        "grows": grows,
        "verdict": "grows" if grows else ("steady" if len(window) >= 2 else "unknown"),
    }


def _role_order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)


def _value(sample: dict, role: str, metric: str) -> float | None:
    if role == "all":
        vals = [r.get(metric) for r in sample["roles"].values()]
        return None if any(v is None for v in vals) else sum(vals)
    return sample["roles"].get(role, {}).get(metric, 0.0)


# ---------------------------------------------------------------------------------------------
# sampling


def rows_finished(run_dir: Path, seen: dict[str, int]) -> int:
    """Rows in the run's shards (``seen`` caches each shard's row count by name)."""
    import pyarrow.parquet as pq

    d = Path(run_dir) / "shards"
    for f in d.glob("*.parquet") if d.exists() else []:
        if f.name not in seen:
            try:
                seen[f.name] = pq.read_metadata(f).num_rows
            except OSError:  # being written (should not happen: shards are renamed into place)
                continue
    return sum(seen.values())


class Sampler(threading.Thread):
    """Every ``interval`` s: memory of the ``root`` process and its descendants, by role."""

    def __init__(self, root_pid: int, run_dir: Path, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(root_pid)
        self.run_dir, self.interval = run_dir, interval
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.procs: dict[int, dict] = {}  # pid -> last role and title, first/last/peak RSS
        self.started: dict[int, float] = {}  # pid -> create time: which process a pid was
        self._halt = threading.Event()
        self._shards: dict[str, int] = {}

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while True:
            self.sample()
            if self._halt.wait(self.interval):
                return

    def sample(self) -> None:
        import psutil

        t_start = time.monotonic()
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the driver is gone
            return
        roles: dict[str, dict] = {}
        for p in procs:
            try:
                with p.oneshot():
                    title = " ".join(p.cmdline()) or p.name()
                    role = "driver" if p.pid == self.root.pid else role_of(title, p.name())
                    mem = p.memory_full_info()  # rss from statm, uss from smaps
            except psutil.Error:  # exited between the listing and the read
                continue
            rss, uss = mem.rss / MIB, mem.uss / MIB
            self.started.setdefault(p.pid, p.create_time())
            r = roles.setdefault(role, {"rss_mib": 0.0, "uss_mib": 0.0, "procs": 0})
            r["rss_mib"] += rss
            r["uss_mib"] += uss
            r["procs"] += 1
            # a process changes its title as it starts (``default_worker.py`` -> ``ray::IDLE``
            # -> ``ray::ServeReplica:...``; ``multiprocessing.spawn`` -> ``VLLM::EngineCore``)
            rec = self.procs.setdefault(
                p.pid, {"first_title": title[:120].rstrip(), "first_rss_mib": round(rss, 1)}
            )
            rec.update(role=role, title=title[:120].rstrip(), last_rss_mib=round(rss, 1))
            rec["peak_rss_mib"] = max(rec.get("peak_rss_mib", 0.0), round(rss, 1))
        self.samples.append(
            {
                "t": round(t_start - self.t0, 1),
                "rows": rows_finished(self.run_dir, self._shards),
                "roles": {
                    k: {**v, "rss_mib": round(v["rss_mib"], 1), "uss_mib": round(v["uss_mib"], 1)}
                    for k, v in sorted(roles.items(), key=lambda kv: _role_order(kv[0]))
                },
                "available_mib": round(psutil.virtual_memory().available / MIB),
                "sample_ms": round(1000 * (time.monotonic() - t_start)),
            }
        )


# ---------------------------------------------------------------------------------------------
# the run


def write_first_turns(questions: Path, path: Path) -> int:
    """The first user turn of every question in ``questions`` as MT-Bench records at ``path``."""
    from moaa_cluster.data.sources import Source, load_rows

    rows, _ = load_rows([Source(name="mt_bench", path=str(questions))])
    if not rows:
        raise ValueError(f"{questions} holds no usable question")
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            rec = {"question_id": r["source_id"], "turns": r["turns"][:1]}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(rows)


def synth_command(args: argparse.Namespace, first_turns: Path, per_source: int, out: Path):
    """``moaa synth`` on ``args.rows`` first turns (extra sources for the repeats)."""
    repeats = -(-args.rows // per_source)
    return [
        sys.executable,
        "-m",
        "moaa_cluster.cli",
        "synth",
        "dataset=mt_bench",
        "dataset.name=soak",
        f"dataset.sources.mt_bench.path={first_turns}",
        *(f"+dataset.sources.mt_bench_r{k}.path={first_turns}" for k in range(1, repeats)),
        f"limit={args.rows}",
        f"mixture.sampling.max_tokens={args.max_tokens}",
        f"seed={args.seed}",
        f"output_root={out}",
        "run_name=soak",
        "overwrite=true",
        "progress=false",
        *args.override,
    ]


def stop_tree(proc: subprocess.Popen, started: dict[int, float]) -> list[int]:
    """Stops our ``moaa synth`` (SIGINT: it shuts its engines and Ray down), then kills any
    process of its tree still alive: only the processes the sampler saw under it (same pid
    and same creation time, so a reused pid is never touched). Returns the pids killed."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    killed = []
    for pid, created in started.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.kill()
                killed.append(pid)
        except psutil.Error:
            continue
    return killed


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="moaa-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    first_turns = work / "first_turns.jsonl"
    per_source = write_first_turns(args.questions, first_turns)
    run_dir = work / "soak"
    cmd = synth_command(args, first_turns, per_source, work)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    log_path = work / "synth.log"
    print(f"soak: {args.rows} rows, max_tokens {args.max_tokens}; log {log_path}", flush=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=harness.REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    sampler = Sampler(proc.pid, run_dir, args.interval)
    sampler.start()
    try:
        rc = proc.wait(timeout=args.timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        sampler.stop()
        stop_tree(proc, sampler.started)
        print(f"soak: error: stopped ({type(exc).__name__}); see {log_path}", file=sys.stderr)
        return 1
    wall = time.monotonic() - t0
    sampler.stop()
    sampler.join()
    leftovers = stop_tree(proc, sampler.started)  # nothing should be left; make sure
    manifest_path = run_dir / "manifest.json"
    if rc != 0 or not manifest_path.exists():
        tail = log_path.read_text()[-3000:]
        print(f"soak: error: moaa synth exited {rc}:\n{tail}", file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    counts = manifest["counts"]
    shard_rows = counts["rows_ok"] + counts["rows_failed"]  # failed rows are in shards too
    analysis = analyse(sampler.samples, shard_rows, args.threshold_pct)
    result = {
        "backend": "serve",
        "questions": str(args.questions),
        "command": " ".join(cmd[2:]),
        "settings": {
            "rows": args.rows,
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "interval_s": args.interval,
            "overrides": args.override,
        },
        "wall_s": round(wall, 1),
        "leftover_processes_killed": leftovers,
        "synth_timings_s": manifest["timings_s"],
        "counts": {k: v for k, v in counts.items() if k != "finish_reasons"},
        "analysis": analysis,
        "processes": sorted(
            ({"pid": pid, **rec} for pid, rec in sampler.procs.items()),
            key=lambda r: (_role_order(r["role"]), r["pid"]),
        ),
        "samples": sampler.samples,
    }
    path = harness.write_result("soak-serve", result, args.out)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(summary_line(result, path), flush=True)
    return 0


def reanalyse(path: Path, threshold_pct: float) -> int:
    """Recomputes the analysis of a result file from its recorded samples (in place)."""
    result = json.loads(Path(path).read_text())
    counts = result["counts"]
    result["analysis"] = analyse(
        result["samples"], counts["rows_ok"] + counts["rows_failed"], threshold_pct
    )
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(path)
    print(summary_line(result, path), flush=True)
    return 0


def summary_line(result: dict, path: Path) -> str:
    a = result["analysis"]
    parts = []
    for role, rec in a["roles"].items():
        rss = rec.get("rss", {})
        if rss.get("slope_mib_per_100_rows") is None:
            continue
        parts.append(
            f"{role} {rss['first_quarter_mib']:.0f}->{rss['last_quarter_mib']:.0f} MiB "
            f"({rss['slope_mib_per_100_rows']:+.1f}/100 rows)"
        )
    verdict = (
        "GROWS: " + ", ".join(a["grows"])
        if a["grows"]
        else ("nothing grows" if a["verdict"] == "steady" else "too short to tell")
    )
    threshold = a["threshold_pct_per_100_rows"]
    rows = result["counts"]["rows_ok"]
    return (
        f"soak[serve]: {rows} rows in {result['wall_s']:.0f}s; RSS first->last quarter: "
        f"{'; '.join(parts)}; {verdict} (threshold {threshold:g}% of level per 100 rows) -> {path}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__.split("\n\n")[0],
        epilog="A role grows when its RSS slope over the generation window exceeds "
        "--threshold-pct of its first-quarter median per 100 rows. Run under the real-stack "
        "lock: flock /tmp/moaa-realstack.lock python -m benchmarks.soak",
    )
    p.add_argument("--rows", type=int, default=300, help="rows to synthesize (default 300)")
    p.add_argument(
        "--max-tokens", type=int, default=24, help="max_tokens of every call (default 24)"
    )
    p.add_argument(
        "--interval", type=float, default=5.0, help="seconds between memory samples (default 5)"
    )
    p.add_argument("--seed", type=int, default=0, help="`moaa synth` seed (default 0)")
    p.add_argument(
        "--threshold-pct",
        type=float,
        default=THRESHOLD_PCT,
        help="a role grows when its RSS slope exceeds this %% of its level per 100 rows "
        f"(default {THRESHOLD_PCT:g})",
    )
    p.add_argument(
        "--questions",
        type=Path,
        default=harness.DEFAULT_QUESTIONS,
        help=f"MT-Bench question.jsonl (default {harness.DEFAULT_QUESTIONS})",
    )
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        help="Hydra override passed to `moaa synth` (repeatable), e.g. -o cluster.workers=4",
    )
    p.add_argument(
        "--work-dir", type=Path, default=None, help="run directory and log (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (run, log) afterwards")
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="stop `moaa synth` after this many seconds"
    )
    p.add_argument("--out", type=Path, default=None, help="result file (default results/)")
    p.add_argument(
        "--reanalyse",
        type=Path,
        metavar="RESULT",
        help="run nothing: recompute the analysis of a result file from its samples",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reanalyse:
        return reanalyse(args.reanalyse, args.threshold_pct)
    if args.rows < 1 or args.interval <= 0:
        print("soak: error: --rows and --interval must be positive", file=sys.stderr)
        return 2
    if not Path(args.questions).is_file():
        print(f"soak: error: no question file at {args.questions}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
