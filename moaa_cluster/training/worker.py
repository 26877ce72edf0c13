"""What every training recipe does inside a Ray Train worker.

Loading the model, resuming from Ray Train's latest checkpoint, training with a TRL trainer
and exporting the final checkpoint are the same for SFT and DPO (``run`` reads top to
bottom); the recipes (``sft.py``, ``dpo.py``) name their TRL trainer and say what is theirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from moaa_cluster.runs import storage
from moaa_cluster.training.settings import TrainSettings

log = logging.getLogger(__name__)

EXPORT_DIR = "model"  # inside the final Ray Train checkpoint, and the run directory
INFO_FILE = "train_info.json"


def attn_implementation(settings: TrainSettings) -> str:
    import importlib.util

    import torch

    if settings.attn_implementation:
        return settings.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model_and_tokenizer(settings: TrainSettings):
    """The base model in the training dtype, and its tokenizer (with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        settings.base_model, trust_remote_code=settings.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        settings.base_model,
        dtype=getattr(torch, settings.train_dtype),
        attn_implementation=attn_implementation(settings),
        trust_remote_code=settings.trust_remote_code,
    )
    return model, tokenizer


def peft_config(settings: TrainSettings):
    if not settings.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **settings.lora)


def scratch_dir(settings: TrainSettings, rank: int) -> Path:
    """This worker's local scratch directory, named by the run (its data file) and the rank.

    A fixed name, not a fresh temporary one: a worker killed outright (SIGKILL, OOM) cannot
    clean up, and the attempt Ray Train starts in its place on the same node clears what it
    left (a checkpoint and a model copy: GBs at 8B scale) before using the directory.
    """
    key = hashlib.sha1(settings.data_file.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"moaa-{settings.kind}-{key}-rank{rank}"


@contextlib.contextmanager
def fresh_dir(path: Path) -> Iterator[Path]:
    """``path`` emptied of what an earlier attempt left, and removed on the way out."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def resume_point(scratch: Path) -> tuple[str | None, int, Path | None]:
    """Where Ray Train's latest checkpoint leaves this run (downloaded into ``scratch``).

    Returns:
        ``(trainer_checkpoint_dir, global_step, finished_export_dir)``: the HF Trainer
        checkpoint to resume from (``None`` on a fresh start), the step it holds, and, when
        the previous attempt already exported the final model, that export.
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, 0, None
    local = Path(ckpt.to_directory(str(scratch / "resume")))
    if (local / EXPORT_DIR).exists():
        return None, 0, local
    hf = local / "checkpoint"  # RayTrainReportCallback's layout
    state = json.loads((hf / "trainer_state.json").read_text())
    return str(hf), int(state.get("global_step", 0)), None


def _plain_print(*objects, sep=" ", end="\n", file=None, flush=False) -> None:
    """Python's own ``print`` semantics: write to ``file`` or the current ``sys.stdout``."""
    out = file if file is not None else sys.stdout
    out.write(sep.join(map(str, objects)) + end)
    if flush:
        out.flush()


@contextlib.contextmanager
def quiet_stdout():
    """Plain ``print`` while the trainer prepares its dataset.

    ``datasets`` fingerprints TRL's tokenize function with dill, whose global-name scan
    disassembles the function into a temporarily swapped ``sys.stdout``. Ray Train patches
    ``print`` in its workers to send every line to its logger as well, so a thousand lines
    of bytecode would reach the driver's log; the plain ``print`` keeps them in dill's
    buffer. Everything else prints as before.
    """
    import builtins

    patched = builtins.print
    builtins.print = _plain_print
    try:
        yield
    finally:
        builtins.print = patched


def make_report_callback():
    from ray.train.huggingface.transformers import RayTrainReportCallback

    return RayTrainReportCallback()


def export(trainer, tokenizer, settings: TrainSettings, resumed_from: int, train_metrics: dict):
    """Reports the final checkpoint: merged HF weights + tokenizer + the run's log history.

    Rank 0 writes the export; every rank reports so the workers stay in step.
    """
    import ray.train
    import torch

    ctx = ray.train.get_context()
    info = {
        "kind": settings.kind,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "world_size": ctx.get_world_size(),
        "log_history": trainer.state.log_history,
        "train_metrics": train_metrics,
    }
    if ctx.get_world_rank() != 0:
        ray.train.report(metrics={"final": 1, "global_step": info["global_step"]}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="moaa-export-") as tmp:
        out = Path(tmp) / EXPORT_DIR
        model = trainer.model
        if hasattr(model, "merge_and_unload"):  # LoRA: one plain checkpoint for vLLM
            model = model.merge_and_unload()
        model = model.to(getattr(torch, settings.export_dtype))
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        gen = Path(settings.base_model) / "generation_config.json"
        if gen.exists():
            shutil.copy(gen, out / "generation_config.json")
        (Path(tmp) / INFO_FILE).write_text(json.dumps(info, indent=1, default=str))
        ray.train.report(
            metrics={"final": 1, "global_step": info["global_step"]},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
        )


def report_existing_export(local: Path) -> None:
    """A rerun after the export was reported but before the driver copied it: report it again."""
    import ray.train

    ctx = ray.train.get_context()
    info = json.loads((local / INFO_FILE).read_text())
    ckpt = ray.train.Checkpoint.from_directory(str(local)) if ctx.get_world_rank() == 0 else None
    ray.train.report(metrics={"final": 1, "global_step": info["global_step"]}, checkpoint=ckpt)


def run(config: dict, make_config, trainer_cls) -> None:
    """One worker's whole run with a TRL trainer: resume point, model, data, train, export.

    Args:
        config: ``TrainSettings`` as a dict (what Ray Train hands every worker).
        make_config: The recipe's ``trl_config(settings, output_dir, *, world_size, use_cpu)``.
        trainer_cls: The recipe's TRL trainer.
    """
    import datasets
    import ray.train
    import torch

    settings = TrainSettings(**config)
    if storage.is_uri(settings.base_model):  # a node-local copy (e.g. the pipeline's SFT model)
        from moaa_cluster.runs.model_cache import fetch_checkpoint

        settings = replace(settings, base_model=str(fetch_checkpoint(settings.base_model)))
    ctx = ray.train.get_context()
    with fresh_dir(scratch_dir(settings, ctx.get_world_rank())) as scratch:
        resume, resumed_from, finished = resume_point(scratch)
        if finished is not None:
            report_existing_export(finished)
            return
        # before the model loads: a recipe TRL refuses fails in seconds, not after minutes of
        # loading weights, and DeepSpeed ZeRO-3 needs its config to exist before from_pretrained
        args = make_config(
            settings,
            str(scratch),
            world_size=ctx.get_world_size(),
            use_cpu=not torch.cuda.is_available(),
        )
        model, tokenizer = load_model_and_tokenizer(settings)
        # on object storage: a local copy in the scratch directory (datasets reads local files)
        data_file = storage.fetch(settings.data_file, scratch)
        train = datasets.load_dataset("parquet", data_files=str(data_file), split="train")
        with quiet_stdout():
            trainer = trainer_cls(
                model=model,
                args=args,
                train_dataset=train,
                processing_class=tokenizer,
                peft_config=peft_config(settings),
                callbacks=[make_report_callback()],
            )
        result = trainer.train(resume_from_checkpoint=resume)
        export(trainer, tokenizer, settings, resumed_from, result.metrics)
