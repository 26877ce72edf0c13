"""SFT recipe: TRL ``SFTTrainer`` on the MoA-synthesized conversations (``messages``).

Loss on the whole conversation as TRL computes it for conversational data; packing, max
length, learning rate and epochs come from ``conf/train/sft_*.yaml``. Runs in every Ray Train
worker of ``ray_train.fit``.
"""

from __future__ import annotations

from moaa_cluster.training import worker
from moaa_cluster.training.settings import TrainSettings, trainer_args


def trl_config(settings: TrainSettings, output_dir: str, *, world_size: int, use_cpu: bool):
    """The ``trl.SFTConfig`` a worker trains with (see ``settings.trainer_args``).

    Builds the object only: no model, data or device is touched beyond what
    ``TrainingArguments`` itself checks, so a recipe TRL refuses fails here.

    Raises:
        TypeError: a recipe key ``SFTConfig`` does not know.
        ValueError: a value ``SFTConfig`` refuses (e.g. bf16 on a machine without it).
    """
    from trl import SFTConfig

    return SFTConfig(**trainer_args(settings, output_dir, world_size=world_size, use_cpu=use_cpu))


def train_loop(config: dict) -> None:
    """Ray Train ``train_loop_per_worker`` for SFT."""
    from trl import SFTTrainer

    worker.run(config, trl_config, SFTTrainer)
