"""The report's PNG plots (matplotlib, files only); each returns None when it has no data."""

from __future__ import annotations

from pathlib import Path

from moaa_cluster.reporting.part import RunPart


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


def plot_timings(parts: list[RunPart], path: Path) -> Path | None:
    """Stacked bars: each stage's wall time split into its phases."""
    data = []
    for s in parts:
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


def plot_tokens(parts: list[RunPart], path: Path) -> Path | None:
    """Grouped bars: prompt and generated tokens per (stage, model)."""
    items = [(f"{s.name}\n{m}", t) for s in parts for m, t in s.tokens.items()]
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


def plot_throughput(parts: list[RunPart], path: Path) -> Path | None:
    """Generated tokens per second of each stage's inference phase, per model."""
    items = [
        (f"{s.name}\n{m}", t["completion_tokens"] / s.inference_s)
        for s in parts
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


def plot_scores(parts: list[RunPart], path: Path) -> Path | None:
    """Histograms of the judge scores of chosen vs rejected candidates."""
    pairs = [s.scores for s in parts if s.scores]
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


def plot_losses(parts: list[RunPart], path: Path) -> Path | None:
    series = [(s.name, s.losses) for s in parts if s.losses]
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
