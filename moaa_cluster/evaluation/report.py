"""``moaa report RUN_DIR``: one markdown page with PNG plots and a cost table for a run.

It reads what a run directory holds, whatever task wrote it: ``synth`` (``sft.parquet``),
``sample``/``prefs`` (``candidates.parquet``/``prefs.parquet``), ``judge-eval``
(``judge_eval.json``), ``eval`` (``summary.json``, ``judgments.parquet``), ``train-sft`` /
``train-dpo`` (``metrics.jsonl``), or a pipeline directory whose subdirectories are such
stages. It writes ``report.md`` and ``plots/*.png`` into the run directory:

* tokens (prompt and generated) and wall time per stage and per model, throughput per model;
* the judge's verdict parse-failure and position-consistency rates;
* score distributions of chosen vs rejected candidates;
* win rates with their bootstrap intervals (and the length-controlled win rate);
* training loss curves;
* a cost table in the spirit of MoAA's cost comparison (arXiv 2505.03059, Tables 10-11):
  tokens per model, wall time, GPU-hours (wall time x the GPUs of the run's cluster
  config), and dollars when prices per 1M tokens (and per GPU-hour) are given.

A missing piece is skipped with a line saying what is missing; it never stops the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.runs.files import read_json

KIND_FILES = (
    ("eval", "summary.json"),
    ("judge-eval", "judge_eval.json"),
    ("prefs", "prefs.parquet"),
    ("sample", "candidates.parquet"),
    ("synth", "sft.parquet"),
    ("train", "metrics.jsonl"),
)
# the phase of each task's timings that is inference (for throughput)
INFERENCE_PHASE = {
    "synth": "generation",
    "prefs": "sample_and_judge",
    "sample": "sample_and_judge",
    "judge-eval": "judging",
    "eval": "answer_and_judge",
}

# stage subdirectories of `moaa pipeline`, in the order they run
PIPELINE_ORDER = ("synth", "sft", "sample", "prefs", "dpo", "eval")


@dataclass
class Stage:
    """What the report knows about one run directory (one stage)."""

    name: str
    kind: str
    path: Path
    manifest: dict | None = None
    timings: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)  # model -> {calls, prompt_tokens, completion_tokens}
    gpus: float | None = None
    gpu_note: str = ""
    judge_rates: list[dict] = field(default_factory=list)  # label, parse failures, consistency
    win_rates: list[dict] = field(default_factory=list)  # label, rate, interval, lc
    scores: tuple[list[float], list[float]] | None = None  # chosen, rejected
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step, loss)
    lines: list[str] = field(default_factory=list)  # markdown details
    missing: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float | None:
        return self.timings.get("total")

    @property
    def inference_s(self) -> float | None:
        phase = INFERENCE_PHASE.get(self.kind)
        return self.timings.get(phase) if phase else None


def detect(path: Path) -> str | None:
    """The kind of run in ``path``: a task name, ``pipeline``, or ``None``."""
    path = Path(path)
    manifest = read_json(path / "manifest.json") or {}
    task = manifest.get("task")
    if task == "pipeline" or (task is None and stage_dirs(path)):
        return "pipeline"
    if isinstance(task, str) and task.startswith("train-"):
        return "train"
    if task == "judge_eval":
        return "judge-eval"
    if task in ("synth", "sample", "prefs", "eval", "judge-eval"):
        return task
    for kind, name in KIND_FILES:
        if (path / name).exists():
            return kind
    return None


def stage_dirs(path: Path) -> list[Path]:
    """Subdirectories that hold a recognizable stage, in the pipeline manifest's order."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [d for d in sorted(path.iterdir()) if d.is_dir() and detect_leaf(d)]
    order = list(((read_json(path / "manifest.json") or {}).get("stages") or {}).keys())
    order += [s for s in PIPELINE_ORDER if s not in order]  # before the manifest exists
    return sorted(found, key=lambda d: order.index(d.name) if d.name in order else len(order))


def detect_leaf(path: Path) -> str | None:
    """Like :func:`detect` without looking for nested stages."""
    manifest = read_json(path / "manifest.json") or {}
    task = manifest.get("task")
    if isinstance(task, str) and task.startswith("train-"):
        return "train"
    if task in ("synth", "sample", "prefs", "eval", "judge-eval"):
        return task
    for kind, name in KIND_FILES:
        if (path / name).exists():
            return kind
    return None


def _cluster_of(manifest: dict | None, parent: dict | None) -> dict | None:
    for m in (manifest, parent):
        if not m:
            continue
        if isinstance(m.get("cluster"), dict):
            return m["cluster"]
        if isinstance((m.get("config") or {}).get("cluster"), dict):
            return m["config"]["cluster"]
    return None


def gpus_of(stage: Stage, parent: dict | None) -> tuple[float | None, str]:
    """GPUs a stage held, from its training scaling or its cluster config, and how we know."""
    m = stage.manifest or {}
    scaling = m.get("scaling")
    if isinstance(scaling, dict) and "use_gpu" in scaling:
        n = float(scaling.get("num_workers") or 1) if scaling.get("use_gpu") else 0.0
        return n, "Ray Train workers" if n else "CPU training"
    cluster = _cluster_of(m, parent)
    if cluster is None:
        return None, "no cluster config in the manifest"
    if cluster.get("num_gpus") not in (None, 0):
        return float(cluster["num_gpus"]), "cluster.num_gpus"
    if cluster.get("nodes") and cluster.get("gpus_per_node"):
        return float(cluster["nodes"]) * float(cluster["gpus_per_node"]), "nodes x gpus_per_node"
    if cluster.get("accelerator_type") is None:
        return 0.0, "CPU cluster"
    return None, "GPU count not in the cluster config (pass --gpus)"


def _add_tokens(tokens: dict, model: str, calls: int, prompt: int, completion: int) -> None:
    t = tokens.setdefault(model, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    t["calls"] += int(calls or 0)
    t["prompt_tokens"] += int(prompt or 0)
    t["completion_tokens"] += int(completion or 0)


def _read_parquet(path: Path, columns: list[str] | None = None) -> list[dict] | None:
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    names = set(pq.read_schema(path).names)
    cols = [c for c in columns if c in names] if columns else None
    return pq.read_table(path, columns=cols).to_pylist()


def _load_synth(stage: Stage) -> None:
    counts = (stage.manifest or {}).get("counts") or {}
    for model, t in (counts.get("tokens_per_model") or {}).items():
        _add_tokens(stage.tokens, model, t["calls"], t["prompt_tokens"], t["completion_tokens"])
    rows = _read_parquet(stage.path / "sft.parquet", ["id", "calls"])
    if rows is None:
        stage.missing.append(f"no sft.parquet in {stage.path}")
        return
    if not stage.tokens:
        for r in rows:
            for c in r["calls"] or []:
                _add_tokens(stage.tokens, c["model"], 1, c["prompt_tokens"], c["completion_tokens"])
    latency: dict[str, list[float]] = {}
    finish: dict[str, dict[str, int]] = {}
    for r in rows:
        for c in r["calls"] or []:
            latency.setdefault(c["model"], []).append(float(c["seconds"] or 0.0))
            f = finish.setdefault(c["model"], {})
            f[str(c["finish_reason"])] = f.get(str(c["finish_reason"]), 0) + 1
    stage.lines.append(
        f"{len(rows)} conversations; {counts.get('multi_turn_rows', '?')} multi-turn, "
        f"{counts.get('rows_failed', '?')} failed, {counts.get('rejects_input', '?')} rejected "
        "on input."
    )
    if latency:
        stage.lines += [
            "",
            "| model | calls | median s/call | finish reasons |",
            "|---|---|---|---|",
        ]
        for model, secs in latency.items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(finish[model].items()))
            stage.lines.append(
                f"| {model} | {len(secs)} | {statistics.median(secs):.2f} | {reasons} |"
            )


def _consistency(outcomes: list[str]) -> float | None:
    decided = sum(o not in ("tie", "unresolved") for o in outcomes)
    both = sum(o != "unresolved" for o in outcomes)
    return decided / both if both else None


def _load_prefs(stage: Stage) -> None:
    m = stage.manifest or {}
    counts = m.get("counts") or {}
    sampler = ((m.get("config") or {}).get("sampler") or {}).get("name") or "sampler"
    fname = "candidates.parquet" if stage.kind == "sample" else "prefs.parquet"
    rows = _read_parquet(
        stage.path / fname,
        ["candidate_tokens", "scores", "chosen_index", "rejected_index", "judge"]
        + [f"judge_{k}" for k in ("calls", "prompt_tokens", "completion_tokens", "comparisons")],
    )
    if rows is None:
        stage.missing.append(f"no {fname} in {stage.path}")
        return
    generated = sum(sum(r.get("candidate_tokens") or []) for r in rows)
    n_cands = sum(len(r.get("candidate_tokens") or []) for r in rows)
    if n_cands:
        # prompt tokens of the samples are not recorded per candidate
        _add_tokens(stage.tokens, sampler, n_cands, 0, generated)
        stage.lines.append(
            f"{sampler}: {n_cands} candidates, {generated} generated tokens (the candidates' "
            "prompt tokens are not recorded: 0 in the cost table)."
        )
    j = counts.get("judge") or {}
    judge_name = f"judge:{(m.get('judge') or {}).get('name', 'judge')}"
    if j:
        _add_tokens(
            stage.tokens,
            judge_name,
            j.get("calls"),
            j.get("prompt_tokens"),
            j.get("completion_tokens"),
        )
    stage.lines.append(
        f"{counts.get('pairs', len(rows))} preference pairs from "
        f"{counts.get('candidate_sets', '?')} candidate sets; skipped "
        f"{counts.get('skipped_identical', '?')} identical, "
        f"{counts.get('skipped_no_preference', '?')} without preference; "
        f"{counts.get('rows_failed', '?')} failed."
        if stage.kind == "prefs"
        else f"{counts.get('candidate_sets', len(rows))} candidate sets ({n_cands} candidates)."
    )
    if stage.kind != "prefs":
        return
    outcomes = []
    for r in rows:
        if r.get("judge"):
            outcomes += [p["outcome"] for p in json.loads(r["judge"]).get("pairs", [])]
    if j.get("comparisons"):
        stage.judge_rates.append(
            {
                "label": f"{stage.name}: {judge_name}",
                "parse_fail_before": j.get("verdict_unparsed", 0) / j["comparisons"],
                "parse_fail_after": j.get("verdict_unresolved", 0) / j["comparisons"],
                "position_consistency": _consistency(outcomes),
            }
        )
    chosen = [r["scores"][r["chosen_index"]] for r in rows if r.get("scores")]
    rejected = [r["scores"][r["rejected_index"]] for r in rows if r.get("scores")]
    if chosen:
        stage.scores = (chosen, rejected)
        stage.lines.append(
            f"Mean judge score: chosen {statistics.mean(chosen):.2f}, rejected "
            f"{statistics.mean(rejected):.2f} (a win counts 1, a tie 0.5 per comparison)."
        )


def _load_judge_eval(stage: Stage) -> None:
    data = read_json(stage.path / "judge_eval.json")
    if data is None:
        stage.missing.append(f"no judge_eval.json in {stage.path} (the run has not finished)")
        return
    stage.timings = {**data.get("timings_s", {}), **stage.timings}
    stage.lines += [
        "| judge | pairs | accuracy | ties | position consistency |",
        "|---|---|---|---|---|",
    ]
    for row in data.get("table", []):
        _add_tokens(
            stage.tokens,
            f"judge:{row['judge']}",
            row["calls"],
            row["prompt_tokens"],
            row["completion_tokens"],
        )
        stage.judge_rates.append(
            {
                "label": row["judge"],
                "parse_fail_before": row["parse_fail_before"],
                "parse_fail_after": row["parse_fail_after"],
                "position_consistency": row["position_consistency"],
            }
        )
        stage.win_rates.append(
            {
                "label": f"accuracy: {row['judge']}",
                "rate": row["accuracy"],
                "low": None,
                "high": None,
            }
        )
        stage.lines.append(
            f"| {row['judge']} | {row['pairs']} | {row['accuracy']:.3f} | {row['ties']:.3f} | "
            f"{row['position_consistency']:.3f} |"
        )


def _load_eval(stage: Stage) -> None:
    s = read_json(stage.path / "summary.json")
    if s is None:
        stage.missing.append(f"no summary.json in {stage.path} (the run has not finished)")
        return
    stage.timings = {**s.get("timings_s", {}), **stage.timings}
    for model, t in (s.get("tokens_per_model") or {}).items():
        _add_tokens(stage.tokens, model, t["calls"], t["prompt_tokens"], t["completion_tokens"])
    w = s["win_rate"]

    def add(label: str, r: dict) -> None:
        if r.get("win_rate") is not None:
            stage.win_rates.append(
                {
                    "label": label,
                    "rate": r["win_rate"],
                    "low": r.get("ci_low"),
                    "high": r.get("ci_high"),
                    "lc": r.get("lc_win_rate"),
                }
            )

    add(f"{s['model']} vs {s['baseline']}", w)
    for src, r in (s.get("by_source") or {}).items():
        add(f"  {src}", r)
    j = s.get("judge") or {}
    if j.get("comparisons"):
        stage.judge_rates.append(
            {
                "label": f"{stage.name}: judge:{s.get('judge_name')}",
                "parse_fail_before": j.get("verdict_parse_failure_rate"),
                "parse_fail_after": j.get("verdict_unresolved_rate"),
                "position_consistency": j.get("position_consistency"),
            }
        )
    from moaa_cluster.pipeline.evaluate import format_summary

    table = format_summary(s).splitlines()
    stage.lines += [
        f"{s['evaluated']} of {s['questions']} questions answered and judged "
        f"({s['rejected']} rejected, {s['failed']} failed). Judged on: {s.get('judged_on', '?')}.",
        "",
        f"**{table[0]}**",
        "",
        *table[1:-1],
        "",
        table[-1],
    ]


def _load_train(stage: Stage) -> None:
    m = stage.manifest or {}
    metrics = stage.path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "loss" in rec:
                stage.losses.append((float(rec.get("step", len(stage.losses))), float(rec["loss"])))
    else:
        stage.missing.append(f"no metrics.jsonl in {stage.path}")
    counts = m.get("counts") or {}
    losses = m.get("losses") or {}
    if m:
        stage.lines.append(
            f"{m.get('task', 'train')}: {counts.get('steps', '?')} steps on "
            f"{counts.get('rows', '?')} rows; loss {losses.get('first')} -> {losses.get('last')}."
        )


LOADERS = {
    "synth": _load_synth,
    "sample": _load_prefs,
    "prefs": _load_prefs,
    "judge-eval": _load_judge_eval,
    "eval": _load_eval,
    "train": _load_train,
}


def load_stage(
    path: Path, name: str, parent: dict | None = None, gpus: float | None = None
) -> Stage:
    """Reads one stage directory; problems become ``missing`` lines, never exceptions."""
    kind = detect_leaf(path) or "unknown"
    manifest = read_json(path / "manifest.json")
    stage = Stage(name=name, kind=kind, path=path, manifest=manifest)
    stage.timings = dict((manifest or {}).get("timings_s") or {})
    if manifest is None:
        stage.missing.append(f"no manifest.json in {path}: timings and config unknown")
    loader = LOADERS.get(kind)
    if loader is None:
        stage.missing.append(f"{path}: nothing this report can read")
    else:
        try:
            loader(stage)
        except Exception as exc:  # a damaged file must not cost the rest of the report
            stage.missing.append(f"{path}: could not read ({type(exc).__name__}: {exc})")
    if gpus is not None:
        stage.gpus, stage.gpu_note = gpus, "--gpus"
    else:
        stage.gpus, stage.gpu_note = gpus_of(stage, parent)
    return stage


def load_prices(path: Path | None) -> dict:
    """Prices from a YAML/JSON file: ``{models: {name: {input, output}}, gpu_hour}``.

    Token prices are dollars per 1M tokens; ``models.default`` applies to unlisted models.
    """
    if path is None:
        return {}
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'models' and/or 'gpu_hour'")
    return data


def _price(prices: dict, model: str) -> dict | None:
    table = prices.get("models") or {}
    found = table.get(model) or table.get(model.split(":", 1)[-1]) or table.get("default")
    return found if isinstance(found, dict) else None


def cost_rows(stages: list[Stage], prices: dict, gpu_hour_usd: float | None) -> list[dict]:
    """One row per (stage, model) with tokens and dollars, one per stage with time and GPUs."""
    rows = []
    gpu_price = gpu_hour_usd if gpu_hour_usd is not None else prices.get("gpu_hour")
    for s in stages:
        wall = s.wall_s
        gpu_h = None if wall is None or s.gpus is None else wall / 3600.0 * s.gpus
        usd_gpu = None if gpu_h is None or gpu_price is None else gpu_h * float(gpu_price)
        rows.append(
            {
                "stage": s.name,
                "model": "(stage)",
                "calls": None,
                "prompt_tokens": None,
                "completion_tokens": None,
                "wall_s": wall,
                "gpus": s.gpus,
                "gpu_hours": gpu_h,
                "usd": usd_gpu,
                "note": s.gpu_note,
            }
        )
        for model, t in s.tokens.items():
            p = _price(prices, model)
            usd = None
            if p is not None:
                usd = (
                    t["prompt_tokens"] * float(p.get("input", 0))
                    + t["completion_tokens"] * float(p.get("output", 0))
                ) / 1e6
            rows.append(
                {
                    "stage": s.name,
                    "model": model,
                    **t,
                    "wall_s": None,
                    "gpus": None,
                    "gpu_hours": None,
                    "usd": usd,
                    "note": "",
                }
            )
    return rows


def format_cost_table(rows: list[dict]) -> str:
    def f(v, fmt="{:,}") -> str:
        return "" if v is None else fmt.format(v)

    lines = [
        "| stage | model | calls | prompt tokens | generated tokens | wall s | GPUs | GPU-hours | $ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total = {"prompt_tokens": 0, "completion_tokens": 0, "gpu_hours": 0.0, "usd": 0.0}
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['model']} | {f(r['calls'])} | {f(r['prompt_tokens'])} | "
            f"{f(r['completion_tokens'])} | {f(r['wall_s'], '{:.1f}')} | "
            f"{f(r['gpus'], '{:g}')}{' (' + r['note'] + ')' if r['note'] else ''} | "
            f"{f(r['gpu_hours'], '{:.4f}')} | {f(r['usd'], '{:.4f}')} |"
        )
        for k in total:
            if r.get(k) is not None:
                total[k] += r[k]
    any_usd = any(r["usd"] is not None for r in rows)
    lines.append(
        f"| **total** | | | {total['prompt_tokens']:,} | {total['completion_tokens']:,} | | | "
        f"{total['gpu_hours']:.4f} | {f(total['usd'] if any_usd else None, '{:.4f}')} |"
    )
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_timings(stages: list[Stage], path: Path) -> Path | None:
    """Stacked bars: each stage's wall time split into its phases."""
    data = []
    for s in stages:
        phases = {k: v for k, v in s.timings.items() if k != "total"}
        rest = (s.wall_s or 0.0) - sum(phases.values())
        if rest > 0.5:  # time the task did not attribute to a phase (imports, writing)
            phases["other"] = rest
        if phases:
            data.append((s.name, phases))
    if not data:
        return None
    plt = _plt()
    phases = list(dict.fromkeys(k for _, t in data for k in t))
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(data) + 1.6))
    left = [0.0] * len(data)
    for phase in phases:
        vals = [t.get(phase, 0.0) for _, t in data]
        ax.barh([n for n, _ in data], vals, left=left, label=phase)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("wall time (s)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Wall time per stage")
    return _save(fig, path)


def plot_tokens(stages: list[Stage], path: Path) -> Path | None:
    """Grouped bars: prompt and generated tokens per (stage, model)."""
    items = [(f"{s.name}\n{m}", t) for s in stages for m, t in s.tokens.items()]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(items)), 4))
    xs = range(len(items))
    ax.bar([x - 0.2 for x in xs], [t["prompt_tokens"] for _, t in items], 0.4, label="prompt")
    ax.bar(
        [x + 0.2 for x in xs], [t["completion_tokens"] for _, t in items], 0.4, label="generated"
    )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n for n, _ in items], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("tokens")
    ax.legend()
    ax.set_title("Tokens per stage and model")
    return _save(fig, path)


def plot_throughput(stages: list[Stage], path: Path) -> Path | None:
    """Generated tokens per second of each stage's inference phase, per model."""
    items = [
        (f"{s.name}\n{m}", t["completion_tokens"] / s.inference_s)
        for s in stages
        if s.inference_s
        for m, t in s.tokens.items()
        if t["completion_tokens"]
    ]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(items)), 4))
    ax.bar(range(len(items)), [v for _, v in items], color="tab:green")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([n for n, _ in items], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("generated tokens / s")
    ax.set_title("Throughput per model (over the stage's inference wall time)")
    return _save(fig, path)


def plot_judge(rates: list[dict], path: Path) -> Path | None:
    """Bars: verdict parse failures (before / after recovery) and position consistency."""
    if not rates:
        return None
    plt = _plt()
    keys = [
        ("parse_fail_before", "parse failures"),
        ("parse_fail_after", "unresolved after recovery"),
        ("position_consistency", "position consistency"),
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rates)), 4))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        vals = [r.get(key) if r.get(key) is not None else 0.0 for r in rates]
        ax.bar([i + (k - 1) * width for i in range(len(rates))], vals, width, label=label)
    ax.set_xticks(range(len(rates)))
    ax.set_xticklabels([r["label"] for r in rates], fontsize=7, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.legend(fontsize=8)
    ax.set_title("Judge: verdict parse failures and position consistency")
    return _save(fig, path)


def plot_scores(stages: list[Stage], path: Path) -> Path | None:
    """Histograms of the judge scores of chosen vs rejected candidates."""
    pairs = [s.scores for s in stages if s.scores]
    if not pairs:
        return None
    chosen = [v for c, _ in pairs for v in c]
    rejected = [v for _, r in pairs for v in r]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max(chosen + rejected)
    bins = [x / 2 - 0.25 for x in range(int(2 * top) + 3)]  # half-point scores
    ax.hist(rejected, bins=bins, alpha=0.6, label="rejected")
    ax.hist(chosen, bins=bins, alpha=0.6, label="chosen")
    ax.set_xlabel("judge score (wins + ties/2)")
    ax.set_ylabel("prompts")
    ax.legend()
    ax.set_title("Scores of chosen vs rejected candidates")
    return _save(fig, path)


def plot_win_rates(rates: list[dict], path: Path) -> Path | None:
    """Points with bootstrap intervals; the length-controlled rate as a second marker."""
    if not rates:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rates) + 1.6))
    ys = list(range(len(rates)))
    for y, r in zip(ys, rates, strict=True):
        lo, hi = r.get("low"), r.get("high")
        err = None if lo is None or hi is None else [[r["rate"] - lo], [hi - r["rate"]]]
        ax.errorbar(r["rate"], y, xerr=err, fmt="o", color="tab:blue", capsize=4)
        if r.get("lc") is not None:
            ax.plot(r["lc"], y, "D", color="tab:orange", label="length-controlled")
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_yticks(ys)
    ax.set_yticklabels([r["label"] for r in rates], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("win rate (ties count half) / judge accuracy")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:1], labels[:1], fontsize=8)
    ax.set_title("Win rates with bootstrap intervals")
    return _save(fig, path)


def plot_losses(stages: list[Stage], path: Path) -> Path | None:
    series = [(s.name, s.losses) for s in stages if s.losses]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.set_title("Training loss")
    return _save(fig, path)


# ---- the page ---------------------------------------------------------------------------


def rehearsal_of(run_dir: Path) -> dict | None:
    """The rehearsal record of a run directory's manifest or its stages' manifests, if any."""
    for path in [run_dir / "manifest.json", *sorted(run_dir.glob("*/manifest.json"))]:
        m = read_json(path) or {}
        rec = m.get("rehearsal") or (m.get("config") or {}).get("rehearsal")
        if isinstance(rec, dict):
            return rec
    return None


def rehearsal_lines(rec: dict | None) -> list[str]:
    """The report's opening warning for a rehearsal: what stood in, what the numbers mean."""
    if not rec:
        return []
    names = sorted({m["name"] for m in rec.get("models", {}).values()})
    lines = [
        f"> **Rehearsal.** The packaged model `{rec['stand_in']['name']}` answered for every "
        f"model of this config ({', '.join(names)}), on this machine. The shapes, limits, "
        "prompts, plans and files are the configured ones; the texts, scores and timings say "
        "nothing about the real models.",
    ]
    if rec.get("max_tokens_scale", 1.0) != 1.0:
        lines.append(f"> Answer lengths were scaled by {rec['max_tokens_scale']:g}.")
    lines += [f"> {note}" for note in rec.get("notes", [])]
    return [*lines, ""]


def write_report(
    run_dir: Path,
    *,
    prices: dict | None = None,
    gpus: float | None = None,
    gpu_hour_usd: float | None = None,
    cluster: dict | None = None,
    rehearsal: dict | None = None,
) -> Path:
    """Writes ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path.

    Args:
        run_dir: A stage's run directory or a pipeline directory of stage subdirectories.
        prices: ``{models: {name: {input, output}}, gpu_hour}`` in dollars per 1M tokens
            and per GPU-hour (see :func:`load_prices`).
        gpus: GPUs to charge every stage with, instead of the manifests' cluster configs.
        gpu_hour_usd: Dollars per GPU-hour (overrides ``prices['gpu_hour']``).
        cluster: Cluster config for stages whose manifests carry none (``moaa pipeline``
            passes its own, as its manifest is written after the report).
        rehearsal: The rehearsal record (``moaa_cluster.rehearsal``) when the manifests do
            not carry one yet (``moaa pipeline`` passes its own).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    prices = prices or {}
    kind = detect(run_dir)
    parent = read_json(run_dir / "manifest.json")
    if cluster is not None and _cluster_of(parent, None) is None:
        parent = {**(parent or {}), "cluster": cluster}
    absent: list[str] = []
    if kind == "pipeline":
        stages = [load_stage(d, d.name, parent, gpus) for d in stage_dirs(run_dir)]
        found = {s.name for s in stages}
        absent = [n for n in ((parent or {}).get("stages") or {}) if n not in found]
    elif kind is None:
        stages = []
    else:
        fallback = {"cluster": cluster} if cluster is not None else None
        stages = [load_stage(run_dir, kind, fallback, gpus)]  # the header names the dir
    plots_dir = run_dir / "plots"
    judge_rates = [r for s in stages for r in s.judge_rates]
    win_rates = [r for s in stages for r in s.win_rates]
    figures = [
        ("Wall time per stage", plot_timings(stages, plots_dir / "timings.png"), "timings"),
        (
            "Tokens per stage and model",
            plot_tokens(stages, plots_dir / "tokens.png"),
            "token counts",
        ),
        (
            "Throughput per model",
            plot_throughput(stages, plots_dir / "throughput.png"),
            "inference timings with token counts",
        ),
        (
            "Judge parse failures and position consistency",
            plot_judge(judge_rates, plots_dir / "judge.png"),
            "judge statistics (prefs, judge-eval or eval)",
        ),
        (
            "Scores of chosen vs rejected",
            plot_scores(stages, plots_dir / "scores.png"),
            "preference pairs with scores",
        ),
        (
            "Win rates",
            plot_win_rates(win_rates, plots_dir / "win_rates.png"),
            "win rates (eval) or judge accuracy (judge-eval)",
        ),
        ("Training loss", plot_losses(stages, plots_dir / "loss.png"), "training metrics"),
    ]
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `moaa report {run_dir}`.  ",
        f"Kind: **{kind or 'unrecognized'}**"
        + (
            f" ({len(stages)} stages: {', '.join(s.name + ' = ' + s.kind for s in stages)})"
            if kind == "pipeline"
            else ""
        ),
        "",
    ]
    lines += rehearsal_lines(rehearsal or rehearsal_of(run_dir))
    lines += [f"- skipped: stage {n} has no output yet in {run_dir / n}" for n in absent]
    if absent:
        lines.append("")
    if not stages:
        lines.append(
            "Nothing to report: no manifest.json, sft.parquet, prefs.parquet, candidates.parquet, "
            "judge_eval.json, summary.json or metrics.jsonl here or in a subdirectory."
        )
    else:
        rows = cost_rows(stages, prices, gpu_hour_usd)
        lines += [
            "## Cost",
            "",
            "Tokens as counted by the engines; GPU-hours = stage wall time x the GPUs the "
            "stage's cluster config holds (0 on a CPU cluster); dollars from the given prices "
            "per 1M prompt / generated tokens and per GPU-hour"
            + ("" if prices or gpu_hour_usd is not None else " (none given: `--prices FILE`)")
            + ".",
            "",
            format_cost_table(rows),
            "",
            "## Plots",
            "",
        ]
        for title, png, needs in figures:
            if png is None:
                lines.append(f"- {title}: skipped, the run holds no {needs}.")
            else:
                lines += [f"### {title}", "", f"![{title}](plots/{png.name})", ""]
        for s in stages:
            lines += ["", f"## {s.name} ({s.kind})", "", f"Directory: `{s.path}`", ""]
            if s.timings:
                lines.append(
                    "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.timings.items())
                )
                lines.append("")
            lines += s.lines
            lines += [f"- skipped: {m}" for m in s.missing]
    path = run_dir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="moaa report",
        description=(
            "Write RUN_DIR/report.md with PNG plots (RUN_DIR/plots/) and a cost table for any "
            "run directory: synth, sample, prefs, judge-eval, eval, train-sft/dpo, or a "
            "pipeline directory of such stages."
        ),
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--prices",
        type=Path,
        help="YAML/JSON: {models: {<model name>|default: {input: $/1M, output: $/1M}}, "
        "gpu_hour: $}",
    )
    p.add_argument("--gpus", type=float, help="GPUs per stage (default: from each manifest)")
    p.add_argument("--gpu-hour-usd", type=float, help="dollars per GPU-hour")
    args = p.parse_args(argv)
    try:
        prices = load_prices(args.prices)
        path = write_report(
            args.run_dir, prices=prices, gpus=args.gpus, gpu_hour_usd=args.gpu_hour_usd
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"moaa report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {path}", flush=True)
    return 0
