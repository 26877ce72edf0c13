"""What a training run needs, as plain data that travels to every Ray Train worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from moaa_cluster.errors import ConfigError

# TRL/transformers arguments our recipes set themselves; a config that sets them is refused
# so that nobody wonders which value won
OWNED_ARGS = (
    "output_dir",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "report_to",
    "use_cpu",
    "seed",
    "push_to_hub",
    "hub_model_id",
    "resume_from_checkpoint",
)
# TrainingArguments fields transformers 5 removed, and what replaces them. TRL would refuse
# them with a TypeError only inside the Ray Train worker; the driver refuses them first.
REMOVED_ARGS = {
    "warmup_ratio": (
        "transformers 5 removed it; set warmup_steps to a float in [0, 1) instead, which it "
        "reads as a ratio of the total steps (warmup_ratio: 0.03 -> warmup_steps: 0.03)"
    ),
}


@dataclass(frozen=True)
class TrainSettings:
    """One SFT or DPO run.

    Attributes:
        kind: ``sft`` or ``dpo``.
        base_model: HF checkpoint directory to start from (a packaged model, or the SFT
            run's ``model`` directory for DPO).
        data_file: Validated training rows (written by the driver).
        args: ``trl.SFTConfig`` / ``trl.DPOConfig`` fields (learning rate, epochs or
            max_steps, beta, packing, max_length, save_steps, deepspeed, fsdp, ...).
        per_device_batch_size: Rows per worker per forward pass.
        effective_batch_size: Rows per optimizer step over all workers (the paper's 128);
            gradient accumulation makes up the difference. ``None``: no accumulation.
        lora: ``peft.LoraConfig`` fields, or ``None`` for full fine-tuning. The exported
            checkpoint has the adapters merged, so vLLM loads it like any model.
        seed: Trainer seed.
        train_dtype: Weights dtype while training (``float32`` on CPU; ``bfloat16`` on GPUs).
        export_dtype: Dtype of the exported checkpoint.
        attn_implementation: ``None`` picks flash-attention 2 when installed on a GPU, else sdpa.
        trust_remote_code: Off unless a config turns it on.
    """

    kind: str
    base_model: str
    data_file: str
    args: dict = field(default_factory=dict)
    per_device_batch_size: int = 1
    effective_batch_size: int | None = None
    lora: dict | None = None
    seed: int = 0
    train_dtype: str = "float32"
    export_dtype: str = "bfloat16"
    attn_implementation: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("sft", "dpo"):
            raise ConfigError(f"training kind must be sft or dpo, got {self.kind!r}")
        owned = sorted(set(self.args) & set(OWNED_ARGS))
        if owned:
            raise ConfigError(f"train.args must not set {owned}: the recipe sets them")
        removed = sorted(set(self.args) & set(REMOVED_ARGS))
        if removed:
            raise ConfigError("; ".join(f"train.args.{k}: {REMOVED_ARGS[k]}" for k in removed))
        if self.per_device_batch_size < 1:
            raise ConfigError("per_device_batch_size must be >= 1")
        if self.effective_batch_size is not None and self.effective_batch_size < 1:
            raise ConfigError("effective_batch_size must be >= 1 or null")

    def to_dict(self) -> dict:
        return asdict(self)


def grad_accumulation(effective: int | None, per_device: int, world_size: int) -> int:
    """Gradient accumulation steps so that ``per_device x world x accum == effective``.

    Raises:
        ConfigError: if the effective batch is not a multiple of ``per_device x world``.
    """
    if effective is None:
        return 1
    step = per_device * world_size
    if effective % step:
        raise ConfigError(
            f"effective_batch_size {effective} is not a multiple of per_device_batch_size "
            f"{per_device} x {world_size} worker(s)"
        )
    return effective // step


def trainer_args(
    settings: TrainSettings, output_dir: str, *, world_size: int, use_cpu: bool
) -> dict:
    """The ``trl.SFTConfig`` / ``trl.DPOConfig`` fields of one worker: the recipe's ``args``
    plus the ones the recipe owns.

    Plain data, so the worker and the unit tests build the TRL config from the same dict.

    Args:
        settings: The run.
        output_dir: The trainer's checkpoint directory.
        world_size: Ray Train workers; sets the gradient accumulation for the effective batch.
        use_cpu: Train on CPU (a worker without CUDA).

    Raises:
        ConfigError: if the effective batch does not divide over the workers.
    """
    return {
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 1,
        # the worker's output reaches the driver (and `ray job` logs) through Ray's log
        # stream, where a tqdm bar is a carriage-return line per update: one plain log line
        # per logged step instead (a config may turn the bar back on)
        "disable_tqdm": True,
        **settings.args,
        "output_dir": output_dir,
        "per_device_train_batch_size": settings.per_device_batch_size,
        "gradient_accumulation_steps": grad_accumulation(
            settings.effective_batch_size, settings.per_device_batch_size, world_size
        ),
        "report_to": [],
        "use_cpu": use_cpu,
        "seed": settings.seed,
    }
