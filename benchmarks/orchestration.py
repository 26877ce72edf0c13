"""What stage 1 costs besides the models: ``moaa synth`` against an instant stand-in server.

    python -m benchmarks.orchestration --sizes 1000 10000 --label before --out RESULT.json
    python -m benchmarks.orchestration --sizes 100000 --timeout-s 1500 --append --out RESULT.json

The real command (``python -m moaa_cluster.cli synth``, its own local Ray) on the embedded
mixture's shape (2 proposers, then an aggregator: 3 calls per single-turn row), every model on
``backend: openai`` at ``benchmarks.standin_server`` (answers at once, ``--tokens`` words):
what is left is ours (input checks with the models' tokenizers, Ray Data, shards, resume,
``sft.parquet``).

Per size N (N distinct ``{"prompt": ...}`` JSONL records): a full run (``overwrite=true``)
sampled every 0.2 s: peak RSS of the driver and of the driver plus all its descendants (Ray's
gcs/raylet/workers; the sum counts shared pages in every process), per role
(``benchmarks.soak.role_of``), the first new shard (``first_row_s``, from process start), the
tree's CPU seconds, the stand-in's request count and CPU seconds, the manifest's
``timings_s`` (rates divide by ``generation``). ``final_write_s`` is a write key of
``timings_s`` if the product has one, else the last shard's mtime to the driver's exit. Then
(``--resume-sizes``, default all) a fresh run SIGKILLed (its process group) at about half its
rows in shards, and the same command without ``overwrite``: ``resume_scan_s`` is its
``timings_s.resume_scan`` (else ``read``); every input id (the product's ``load_rows``) must be
among the finished rows (``sft.parquet`` + ``sft_truncated.parquet``, or ``sft/``) exactly
once. Leftover processes of a killed tree are killed by pid (and creation time), never by name.
``--timeout-s`` bounds each run of the command; results are written after every size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import harness, soak
from benchmarks.standin_server import fetch_stats, serve
from moaa_cluster.runs.files import read_json

MIB = 2**20
SAMPLE_S, COUNT_S = 0.2, 0.5  # memory sampling; shard-row counting while waiting to kill
SOURCE = "bench"
MODELS = ("smollm2_135m_instruct", "gemma_3_270m")
WRITE_KEYS = ("write", "outputs", "write_outputs", "final_write", "consolidate")
SCAN_KEYS = ("resume_scan", "read")


def write_inputs(path: Path, n: int) -> None:
    """``n`` distinct single-turn ``{"prompt": ...}`` records, one JSON line each."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {"prompt": f"Write two sentences about topic {i}: why it matters to people."}
            fh.write(json.dumps(rec) + "\n")


def input_ids(path: Path) -> list[str]:
    """The ids the product gives the rows of ``path`` (its own reader and hash)."""
    from moaa_cluster.data.sources import Source, load_rows

    rows, rejects = load_rows([Source(name=SOURCE, path=str(path))])
    if rejects:
        raise ValueError(f"{len(rejects)} benchmark inputs rejected: {rejects[0]['reason']}")
    return [r["id"] for r in rows]


def overrides(inputs: Path, url: str) -> list[str]:
    """The Hydra overrides: the embedded mixture, one source, every model on the stand-in."""
    out = ["mixture=embedded", "~dataset.sources.embedded_demo", f"dataset.name={SOURCE}"]
    out.append(f"+dataset.sources.{SOURCE}.path={inputs}")
    for m in MODELS:
        out += [f"++mixture.models.{m}.backend=openai", f"++mixture.models.{m}.base_url={url}"]
    return out


def synth_command(inputs: Path, run_dir: Path, url: str, overwrite: bool, extra: list) -> list:
    cmd = [sys.executable, "-m", "moaa_cluster.cli", "synth", *overrides(inputs, url)]
    return cmd + [f"output_dir={run_dir}", f"overwrite={str(overwrite).lower()}", *extra]


def settings(extra: list[str], sizes: list[int]) -> dict:
    """What the runs use: the composed config's pool and sampling, the block plan per size."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from moaa_cluster.pipeline.frame import block_plan

    with initialize_config_dir(config_dir=str(harness.REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="synth", overrides=[*overrides(Path("x"), "http://x"), *extra])
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    mixture = OmegaConf.to_container(cfg.mixture, resolve=False)
    return {
        **{k: cluster[k] for k in ("workers", "batch_size", "num_cpus")},
        "mixture": {"layers": mixture["layers"], "sampling": mixture["sampling"]},
        # frame.block_plan per size: [blocks, rows_per_block, blocks_per_worker]
        "block_plan": {str(n): block_plan(n, int(cluster["batch_size"])) for n in sizes},
        "extra_overrides": extra,
        "sample_interval_s": SAMPLE_S,
    }


class Watch:
    """Samples the driver's process tree; counts shard rows; notes the first new shard.

    ``seen``: pid -> creation time (to kill by pid, safely); ``cpu``: pid -> CPU seconds when
    last seen; ``roles``: role -> peak RSS summed over its processes (MiB).
    """

    def __init__(self, proc: subprocess.Popen, run_dir: Path, t0: float):
        import psutil

        self.proc, self.run_dir, self.t0 = proc, run_dir, t0
        self.root = psutil.Process(proc.pid)
        self.seen, self.cpu, self.roles = {}, {}, {}
        self.driver_peak = self.total_peak = 0.0
        self.first_row_s: float | None = None
        self.shards: dict[str, int] = {}
        self.old = set(self._shard_names())  # a resumed run's earlier shards

    def _shard_names(self) -> list[str]:
        d = self.run_dir / "shards"
        return [e.name for e in os.scandir(d) if e.name.endswith(".parquet")] if d.is_dir() else []

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total, roles = 0.0, {}
        for p in procs:
            try:
                with p.oneshot():
                    rss, t = p.memory_info().rss / MIB, p.cpu_times()
                    title = " ".join(p.cmdline()) or p.name()
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                continue
            self.cpu[p.pid] = t.user + t.system
            role = "driver" if p.pid == self.root.pid else soak.role_of(title, p.name())
            roles[role] = roles.get(role, 0.0) + rss
            total += rss
            if p.pid == self.root.pid:
                self.driver_peak = max(self.driver_peak, rss)
        self.total_peak = max(self.total_peak, total)
        for role, mib in roles.items():
            self.roles[role] = max(self.roles.get(role, 0.0), mib)
        if self.first_row_s is None and set(self._shard_names()) - self.old:
            self.first_row_s = time.monotonic() - self.t0

    def rows(self) -> int:
        return soak.rows_finished(self.run_dir, self.shards)

    def kill_tree(self) -> int:
        """SIGKILL to the driver's process group, then to every live process seen in its tree;
        returns how many of those were still there."""
        import psutil

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        killed = 0
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    killed += 1
            except psutil.Error:
                continue
        return killed

    def record(self, wall: float) -> dict:
        return {
            "exit_code": self.proc.returncode,
            "wall_s": round(wall, 2),
            "driver_peak_rss_mb": round(self.driver_peak, 1),
            "total_peak_rss_mb": round(self.total_peak, 1),
            "peak_rss_mb_by_role": {k: round(v, 1) for k, v in sorted(self.roles.items())},
            "first_row_s": None if self.first_row_s is None else round(self.first_row_s, 2),
            "tree_cpu_s": round(sum(self.cpu.values()), 1),
            "driver_cpu_s": round(self.cpu.get(self.proc.pid, 0.0), 1),
        }


def run_synth(cmd: list, run_dir: Path, log_path: Path, timeout_s: float, kill_at: int | None):
    """Runs ``cmd``, sampled every 0.2 s; kills it at ``kill_at`` shard rows or on timeout."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(harness.REPO), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=harness.REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    w, out, counted = Watch(proc, run_dir, t0), {}, 0.0
    while proc.poll() is None:
        w.sample()
        now = time.monotonic()
        if kill_at is not None and now - counted >= COUNT_S:
            counted = now
            if w.rows() >= kill_at:
                out.update(killed=True, killed_after_s=round(now - t0, 2))
                break
        if now - t0 > timeout_s:
            out["timed_out"] = True
            break
        time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
    out["exit_wall"], wall, was_killed = time.time(), time.monotonic() - t0, proc.poll() is None
    out["leftovers_killed"] = w.kill_tree()  # after a clean exit nothing should be left
    if was_killed:
        out["rows_at_kill"] = w.rows()
    return {**out, **w.record(wall)}


def exactly_once(ids: list[str], run_dir: Path) -> dict:
    """Input ``ids`` missing from, or repeated in, the run's finished rows (``sft*.parquet``,
    or every parquet file under an ``sft/`` directory)."""
    import pyarrow.parquet as pq

    files = [run_dir / "sft.parquet", run_dir / "sft_truncated.parquet"]
    if (run_dir / "sft").is_dir():  # the parquet datasets (sft_truncated/: rows cut off)
        files = [
            f for d in ("sft", "sft_truncated") for f in sorted((run_dir / d).rglob("*.parquet"))
        ]
    seen: Counter = Counter()
    for f in (f for f in files if f.is_file()):
        seen.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return {
        "rows_finished": sum(seen.values()),
        "rows_lost": sum(1 for i in ids if i not in seen),
        "rows_duplicated": sum(1 for c in seen.values() if c > 1),
    }


def outcome(run: dict, run_dir: Path, log_path: Path) -> dict:
    """A finished run's record: its measurements, the manifest's timings and counts, the
    final write time, and the log's tail when it failed."""
    manifest = read_json(run_dir / "manifest.json")
    rec = {k: v for k, v in run.items() if k != "exit_wall"}
    if run.get("exit_code") != 0 or manifest is None:
        rec["error_tail"] = log_path.read_text(errors="replace")[-3000:]
    if manifest is None:
        return rec
    timings = rec["timings_s"] = manifest.get("timings_s", {})
    rec["counts"] = {k: v for k, v in manifest.get("counts", {}).items() if k != "finish_reasons"}
    key = next((k for k in WRITE_KEYS if k in timings), None)
    if key is not None:
        rec["final_write_s"], rec["final_write_from"] = timings[key], f"timings_s.{key}"
        return rec
    mtimes = [f.stat().st_mtime for f in (run_dir / "shards").glob("*.parquet")]
    if mtimes:
        rec["final_write_s"] = round(run["exit_wall"] - max(mtimes), 2)
        rec["final_write_from"] = "last shard mtime -> driver exit"
    return rec


def measure_size(n: int, url: str, args: argparse.Namespace, work: Path) -> dict:
    """The full run of ``n`` rows, then (if asked) the kill-and-resume runs."""
    inputs, run_dir, log = work / f"inputs-{n}.jsonl", work / f"run-{n}", work / f"run-{n}.log"
    write_inputs(inputs, n)
    ids = input_ids(inputs)
    before = fetch_stats(url)
    cmd = synth_command(inputs, run_dir, url, True, args.override)
    run = run_synth(cmd, run_dir, log, args.timeout_s, None)
    after = fetch_stats(url)
    rec = {"rows": n, **outcome(run, run_dir, log)}
    rec.update(calls=after["requests"] - before["requests"], calls_expected=3 * n)
    rec["server_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
    secs = rec.get("timings_s", {}).get("generation")
    rec["rates_from"] = "timings_s.generation" if secs else "wall_s"
    secs = secs or rec["wall_s"]
    rec["calls_per_s"] = round(rec["calls"] / secs, 1)
    rec["rows_per_s"] = round(rec.get("counts", {}).get("rows_ok", 0) / secs, 1)
    ok = run.get("exit_code") == 0
    if ok:
        rec.update(exactly_once(ids, run_dir))
    if ok and (args.resume_sizes is None or n in args.resume_sizes):
        rec["resume"] = measure_resume(n, url, args, work, (inputs, ids))
        r = rec["resume"]  # its main figures, repeated at the top
        rec.update({k: r.get(k) for k in ("rows_at_kill", "resume_scan_s", "resume_total_s")})
        rec.update({f"resume_{k}": r.get(k) for k in ("rows_lost", "rows_duplicated")})
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(work / f"resume-{n}", ignore_errors=True)
        inputs.unlink(missing_ok=True)
    return rec


def measure_resume(n: int, url: str, args: argparse.Namespace, work: Path, data: tuple) -> dict:
    """A fresh run killed at about half its rows, then the same command again (resume)."""
    inputs, ids = data
    run_dir, logs = work / f"resume-{n}", (work / f"resume-{n}-a.log", work / f"resume-{n}-b.log")
    cmd = synth_command(inputs, run_dir, url, True, args.override)
    first = run_synth(cmd, run_dir, logs[0], args.timeout_s, max(1, n // 2))
    keys = ("killed", "killed_after_s", "wall_s", "exit_code", "timed_out", "leftovers_killed")
    rec = {"first_run": {k: first.get(k) for k in keys}, "rows_at_kill": first.get("rows_at_kill")}
    if not first.get("killed"):
        rec["note"] = "the first run was not killed at half its rows (timed out or ended)"
        rec["first_run"]["log_tail"] = logs[0].read_text(errors="replace")[-2000:]
        return rec
    before = fetch_stats(url)
    cmd = synth_command(inputs, run_dir, url, False, args.override)
    res = outcome(run_synth(cmd, run_dir, logs[1], args.timeout_s, None), run_dir, logs[1])
    after = fetch_stats(url)
    key = next((k for k in SCAN_KEYS if k in res.get("timings_s", {})), None)
    rec.update(
        resume_scan_s=res["timings_s"][key] if key else None,
        resume_scan_from=f"timings_s.{key}" if key else None,
        resume_total_s=res["wall_s"],
        calls=after["requests"] - before["requests"],
        calls_expected=3 * (n - rec["rows_at_kill"]),
        resumed_run=res,
    )
    if res.get("exit_code") == 0:
        rec.update(exactly_once(ids, run_dir))
    return rec


def summary_line(rec: dict) -> str:
    def f(key: str, fmt: str = "{}") -> str:
        return "-" if rec.get(key) is None else fmt.format(rec[key])

    status = "ok" if rec.get("exit_code") == 0 else f"exit {rec.get('exit_code')}"
    status = "TIMED OUT" if rec.get("timed_out") else status
    return (
        f"{rec['rows']:>7} rows [{status}]: {f('calls_per_s')} calls/s, {f('rows_per_s')} "
        f"rows/s, wall {f('wall_s')} s, driver {f('driver_peak_rss_mb', '{:.0f}')} MiB, tree "
        f"{f('total_peak_rss_mb', '{:.0f}')} MiB, first row {f('first_row_s')} s, final write "
        f"{f('final_write_s')} s, resume scan {f('resume_scan_s')} s (total "
        f"{f('resume_total_s')} s), lost/dup {f('resume_rows_lost')}/"
        f"{f('resume_rows_duplicated')}"
    )


OPTIONS = (
    (("--sizes",), {"type": int, "nargs": "+", "default": [1000, 10000, 100000],
                    "help": "rows per run (default 1000 10000 100000)"}),
    (("--out",), {"type": Path, "default": None,
                  "help": "result file (default benchmarks/results/orchestration.json)"}),
    (("--label",), {"default": None, "help": "which code this measures (before, after ...)"}),
    (("--timeout-s",), {"type": float, "default": 1800.0,
                        "help": "kill a run of the command after this long (default 1800)"}),
    (("--tokens",), {"type": int, "default": 32, "help": "words per answer (default 32)"}),
    (("--resume-sizes",), {"type": int, "nargs": "*", "default": None,
                           "help": "sizes that get the kill-and-resume runs (default: all; "
                           "the flag alone: none)"}),
    (("--append",), {"action": "store_true",
                     "help": "keep the sizes already in --out that this run does not measure"}),
    (("-o", "--override"), {"action": "append", "default": [],
                            "help": "extra Hydra override for `moaa synth` (repeatable)"}),
    (("--work-dir",), {"type": Path, "default": None, "help": "inputs, runs, logs (default temp)"}),
    (("--keep",), {"action": "store_true", "help": "keep inputs and run directories"}),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.orchestration",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flags, kwargs in OPTIONS:
        p.add_argument(*flags, **kwargs)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or harness.RESULTS_DIR / "orchestration.json")
    old = (read_json(out) or {}) if args.append else {}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="moaa-orch-"))
    work.mkdir(parents=True, exist_ok=True)
    conf = settings(args.override, args.sizes)
    conf["timeout_s"] = {str(n): args.timeout_s for n in args.sizes}
    for key in ("block_plan", "timeout_s"):  # per size: the sizes kept from --out keep theirs
        conf[key] = {**(old.get("settings") or {}).get(key, {}), **conf[key]}
    result = {
        "label": args.label if args.label is not None else old.get("label"),
        "settings": {**conf, "standin_tokens": args.tokens},
        "sizes": [s for s in old.get("sizes", []) if s.get("rows") not in args.sizes],
    }
    with serve(tokens=args.tokens) as url:
        for n in args.sizes:
            rec = measure_size(n, url, args, work)
            result["sizes"] = sorted([*result["sizes"], rec], key=lambda s: s["rows"])
            result["standin_server"] = fetch_stats(url)
            harness.write_result("orchestration", result, out)
            print(summary_line(rec), flush=True)
    print(f"-> {out} (work dir {work})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
