"""Finding what a run directory holds and reading it, one :class:`RunPart` per directory.

A run directory is one task's run (``synth``, ``sample``, ``prefs``, ``judge-eval``,
``eval``, ``train-sft`` / ``train-dpo``) or a ``moaa pipeline`` directory whose
subdirectories are its stages; each becomes one :class:`RunPart`.
"""

from __future__ import annotations

from pathlib import Path

from moaa_cluster.reporting.part import RunPart
from moaa_cluster.reporting.readers import LOADERS
from moaa_cluster.runs.files import read_json

KIND_FILES = (
    ("eval", "summary.json"),
    ("judge-eval", "judge_eval.json"),
    ("prefs", "prefs.parquet"),
    ("sample", "candidates.parquet"),
    ("synth", "sft.parquet"),
    ("train", "metrics.jsonl"),
)

# stage subdirectories of `moaa pipeline`, in the order they run
PIPELINE_ORDER = ("synth", "sft", "sample", "prefs", "dpo", "eval_sft", "eval")


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
    # a pipeline's stages in their order (eval_sft, which its manifest does not list, before
    # eval), then any other stage the manifest lists, in its order
    listed = list(((read_json(path / "manifest.json") or {}).get("stages") or {}).keys())
    order = [*PIPELINE_ORDER, *(s for s in listed if s not in PIPELINE_ORDER)]
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


def cluster_of(manifest: dict | None, parent: dict | None) -> dict | None:
    for m in (manifest, parent):
        if not m:
            continue
        if isinstance(m.get("cluster"), dict):
            return m["cluster"]
        if isinstance((m.get("config") or {}).get("cluster"), dict):
            return m["config"]["cluster"]
    return None


def gpus_of(part: RunPart, parent: dict | None) -> tuple[float | None, str]:
    """GPUs a stage held, from its training scaling or its cluster config, and how we know."""
    m = part.manifest or {}
    scaling = m.get("scaling")
    if isinstance(scaling, dict) and "use_gpu" in scaling:
        n = float(scaling.get("num_workers") or 1) if scaling.get("use_gpu") else 0.0
        return n, "Ray Train workers" if n else "CPU training"
    cluster = cluster_of(m, parent)
    if cluster is None:
        return None, "no cluster config in the manifest"
    if cluster.get("num_gpus") not in (None, 0):
        return float(cluster["num_gpus"]), "cluster.num_gpus"
    if cluster.get("nodes") and cluster.get("gpus_per_node"):
        return float(cluster["nodes"]) * float(cluster["gpus_per_node"]), "nodes x gpus_per_node"
    if cluster.get("accelerator_type") is None:
        return 0.0, "CPU cluster"
    return None, "GPU count not in the cluster config (pass --gpus)"


def load_part(
    path: Path, name: str, parent: dict | None = None, gpus: float | None = None
) -> RunPart:
    """Reads one run directory (a task's run or a pipeline stage); problems become ``missing``
    lines, never exceptions."""
    kind = detect_leaf(path) or "unknown"
    manifest = read_json(path / "manifest.json")
    part = RunPart(name=name, kind=kind, path=path, manifest=manifest)
    part.timings = dict((manifest or {}).get("timings_s") or {})
    if manifest is None:
        part.missing.append(f"no manifest.json in {path}: timings and config unknown")
    loader = LOADERS.get(kind)
    if loader is None:
        part.missing.append(f"{path}: nothing this report can read")
    else:
        try:
            loader(part)
        except Exception as exc:  # a damaged file must not cost the rest of the report
            part.missing.append(f"{path}: could not read ({type(exc).__name__}: {exc})")
    if gpus is not None:
        part.gpus, part.gpu_note = gpus, "--gpus"
    else:
        part.gpus, part.gpu_note = gpus_of(part, parent)
    return part


def collect(
    run_dir: Path, kind: str | None, gpus: float | None, cluster: dict | None
) -> tuple[list[RunPart], list[str]]:
    """The run parts of ``run_dir`` (its stages for a pipeline), and the stages listed in the
    pipeline's manifest that have no output yet.

    ``cluster`` stands in for a manifest without a cluster config (``moaa pipeline`` passes
    its own, as its manifest is written after the report).
    """
    parent = read_json(run_dir / "manifest.json")
    if cluster is not None and cluster_of(parent, None) is None:
        parent = {**(parent or {}), "cluster": cluster}
    absent: list[str] = []
    if kind == "pipeline":
        parts = [load_part(d, d.name, parent, gpus) for d in stage_dirs(run_dir)]
        found = {s.name for s in parts}
        absent = [n for n in ((parent or {}).get("stages") or {}) if n not in found]
    elif kind is None:
        parts = []
    else:
        fallback = {"cluster": cluster} if cluster is not None else None
        parts = [load_part(run_dir, kind, fallback, gpus)]  # the header names the dir
    return parts, absent


def rehearsal_of(run_dir: Path) -> dict | None:
    """The rehearsal record of a run directory's manifest or its stages' manifests, if any."""
    for path in [run_dir / "manifest.json", *sorted(run_dir.glob("*/manifest.json"))]:
        m = read_json(path) or {}
        rec = m.get("rehearsal") or (m.get("config") or {}).get("rehearsal")
        if isinstance(rec, dict):
            return rec
    return None
