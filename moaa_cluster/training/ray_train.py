"""SFT and DPO as Ray Train jobs: one ``TorchTrainer`` run per training stage.

The run directory holds everything: ``train_data.parquet`` (validated rows), ``rejects.jsonl``,
``ray_train/`` (Ray Train's storage: checkpoints and its own state, so a rerun of the same
command resumes from the latest checkpoint), and at the end ``model/`` (an HF checkpoint vLLM
and ``moaa sample`` load directly), ``metrics.jsonl`` (the trainer's log history: loss curves)
and ``manifest.json``. It may be on object storage (``output_dir=s3://...``): Ray Train's
``storage_path`` takes the same URI, and the workers read ``train_data.parquet`` from there.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.fs as pafs

from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage
from moaa_cluster.runs.files import write_jsonl
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.task_run import write_rejects
from moaa_cluster.training import data as train_data
from moaa_cluster.training.settings import TrainSettings
from moaa_cluster.training.worker import EXPORT_DIR, INFO_FILE

log = logging.getLogger(__name__)

RAY_DIR = "ray_train"


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers and what each one reserves (``conf/cluster: train``).

    Attributes:
        num_workers: Training processes (one per GPU on a cluster).
        use_gpu: One GPU per worker.
        cpus_per_worker: CPUs each worker reserves.
        accelerator_type: Ray accelerator type for GPU workers, if pinned.
        max_failures: Worker-group restarts Ray Train attempts, each from the latest checkpoint.
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0
    accelerator_type: str | None = None
    max_failures: int = 2


def is_complete(run_dir: Path | str) -> bool:
    """A finished training run: its manifest says so and its model directory exists."""
    manifest = Manifest.load(run_dir)
    if manifest is None or not storage.exists(storage.join(run_dir, EXPORT_DIR, "config.json")):
        return False
    return manifest.complete


def _loops():
    from moaa_cluster.training import dpo, sft

    return {"sft": sft.train_loop, "dpo": dpo.train_loop}


def check_recipe(kind: str, settings: TrainSettings, scaling: Scaling) -> None:
    """Builds the recipe's TRL config once in the driver, before Ray Train starts workers.

    A key or value TRL refuses then fails the command in seconds with one line, instead of
    failing every worker (and every retry) after the cluster was allocated. A refusal that
    depends on the device (bf16 or tf32 on a driver without the workers' GPUs) is left to
    the workers, which build the same config on their own devices.

    Raises:
        ConfigError: The reason TRL gave.
    """
    import tempfile

    from moaa_cluster.training import dpo, sft

    build = {"sft": sft.trl_config, "dpo": dpo.trl_config}[kind]
    with tempfile.TemporaryDirectory() as out:
        try:
            build(settings, out, world_size=scaling.num_workers, use_cpu=not scaling.use_gpu)
        except TypeError as exc:
            raise ConfigError(f"train recipe ({kind}): TRL refuses it: {exc}") from None
        except ValueError as exc:
            if not any(w in str(exc).lower() for w in ("gpu", "cuda")):
                raise ConfigError(f"train recipe ({kind}): TRL refuses it: {exc}") from None


def _copy_export(checkpoint, run_dir: Path | str) -> dict:
    """Copies the exported model of Ray Train's final ``checkpoint`` into ``run_dir/model``
    and returns its info. Locally the copy is staged and renamed into place; on object
    storage the run counts as complete only once its manifest says so, written after."""
    fs, ckpt = checkpoint.filesystem, checkpoint.path
    src = posixpath.join(ckpt, EXPORT_DIR)
    if fs.get_file_info(src).type != pafs.FileType.Directory:
        raise RuntimeError(f"the final Ray Train checkpoint {ckpt} has no exported model")
    target = storage.join(run_dir, EXPORT_DIR)
    if storage.is_uri(run_dir):
        storage.remove(target)
        storage.copy_tree(fs, src, target)
    else:
        staging = Path(run_dir) / f".{EXPORT_DIR}.tmp"
        storage.remove(staging)
        storage.copy_tree(fs, src, staging)
        storage.remove(target)
        staging.rename(target)
    with fs.open_input_stream(posixpath.join(ckpt, INFO_FILE)) as fh:
        return json.loads(fh.read())


def _checked_base_model(settings: TrainSettings) -> TrainSettings:
    """``settings`` with its base model checked to be an HF checkpoint directory and, when
    local, made absolute (Ray Train workers do not run in the driver's working directory);
    one on object storage is copied by each worker (``runs.model_cache``)."""
    if not storage.exists(storage.join(settings.base_model, "config.json")):
        raise ConfigError(f"base model {settings.base_model} is not an HF checkpoint directory")
    if storage.is_uri(settings.base_model):
        return settings
    return replace(settings, base_model=str(Path(settings.base_model).resolve()))


def fit(
    kind: str,
    data_path: str | Path,
    settings: TrainSettings,
    scaling: Scaling,
    opts: RunOptions,
) -> dict:
    """Trains ``settings.base_model`` on ``data_path`` under Ray Train into ``opts.run_dir``;
    returns the manifest.

    Rerunning the same command resumes from Ray Train's latest checkpoint; a finished run is
    skipped (``opts.overwrite`` starts over). ``opts.limit`` caps the rows trained on;
    ``opts.manifest_extra`` goes into the manifest.
    """
    from moaa_cluster import runtime
    from moaa_cluster.runs.files import check_writable

    t_start = time.monotonic()
    run_dir = opts.run_dir if storage.is_uri(opts.run_dir) else Path(opts.run_dir).resolve()
    done = _finished_run(kind, run_dir, opts.overwrite)
    if done is not None:
        return done
    settings = _checked_base_model(settings)
    check_writable(run_dir)
    settings, n_rows, n_rejected = _prepare_data(kind, data_path, settings, run_dir, opts.limit)
    check_recipe(kind, settings, scaling)
    runtime.init_ray(opts.cluster)
    t0 = time.monotonic()
    result = _trainer(kind, settings, scaling, run_dir).fit()
    train_s = time.monotonic() - t0
    info, losses = _collect(kind, result, run_dir)
    manifest = Manifest(
        task=f"train-{kind}",
        status="complete",
        counts={"rows": n_rows, "rejected": n_rejected, "steps": info["global_step"]},
        timings_s={"train": train_s, "total": time.monotonic() - t_start},
        details={
            "base_model": settings.base_model,
            "data": str(data_path),
            "model_dir": str(storage.join(run_dir, EXPORT_DIR)),
            "train": {k: v for k, v in info.items() if k != "kind"},
            "losses": {
                "first": losses[0] if losses else None,
                "last": losses[-1] if losses else None,
            },
            "settings": settings.to_dict(),
            "scaling": scaling.__dict__,
            **opts.manifest_extra,
        },
    ).save(run_dir)
    print(
        f"{kind}: {info['global_step']} steps on {n_rows} rows ({n_rejected} rejected), "
        f"loss {manifest['losses']['first']} -> {manifest['losses']['last']}, "
        f"{train_s:.0f} s; model: {storage.join(run_dir, EXPORT_DIR)}",
        flush=True,
    )
    return manifest


def _finished_run(kind: str, run_dir: Path | str, overwrite: bool) -> dict | None:
    """The manifest of a run already complete in ``run_dir`` (``overwrite`` deletes it first),
    or None when there is training to do."""
    if overwrite:
        storage.remove(run_dir)
    if not is_complete(run_dir):
        return None
    manifest = Manifest.load(run_dir).to_dict()
    print(f"{kind}: already complete in {run_dir} (overwrite=true retrains)", flush=True)
    return manifest


def _prepare_data(
    kind: str,
    data_path: str | Path,
    settings: TrainSettings,
    run_dir: Path | str,
    limit: int | None,
) -> tuple[TrainSettings, int, int]:
    """Validates the rows into ``train_data.parquet`` and ``rejects.jsonl``.

    Returns:
        The settings pointed at that file, the rows kept and the rows rejected.
    """
    rows, rejects = train_data.prepare(kind, data_path, limit)
    data_file = storage.join(run_dir, "train_data.parquet")
    train_data.write(rows, data_file)
    write_rejects(run_dir, rejects)
    log.info("%s: %d rows to train on, %d rejected (%s)", kind, len(rows), len(rejects), data_path)
    return replace(settings, data_file=str(data_file)), len(rows), len(rejects)


def _trainer(kind: str, settings: TrainSettings, scaling: Scaling, run_dir: Path | str):
    """The ``TorchTrainer`` of one run, its Ray Train state kept in ``run_dir/ray_train``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": scaling.cpus_per_worker}
    return TorchTrainer(
        train_loop_per_worker=_loops()[kind],
        train_loop_config=settings.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            accelerator_type=scaling.accelerator_type,
        ),
        run_config=RunConfig(
            name=RAY_DIR,
            storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def _collect(kind: str, result, run_dir: Path | str) -> tuple[dict, list[float]]:
    """Takes the trained model out of Ray Train's result into ``run_dir``.

    Copies the exported model to ``run_dir/model``, deletes the optimizer-state checkpoints
    and writes ``metrics.jsonl`` (the trainer's log history).

    Returns:
        The training info the workers recorded (without its log history) and the losses.
    """
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{kind}: Ray Train finished without a checkpoint")
    info = _copy_export(result.checkpoint, run_dir)
    # the model is out; the optimizer-state checkpoints (GBs each) only served resumption
    for ckpt in storage.list_dirs(storage.join(run_dir, RAY_DIR), "checkpoint_"):
        storage.remove(ckpt)
    history = info.pop("log_history")
    write_jsonl(storage.join(run_dir, "metrics.jsonl"), history)
    if info["resumed_from_step"]:
        print(
            f"{kind}: resumed from the checkpoint at step {info['resumed_from_step']} "
            "after a failure or a rerun",
            flush=True,
        )
    return info, [h["loss"] for h in history if "loss" in h]
