"""DPO recipe: TRL ``DPOTrainer`` on the MoA judge's preference pairs (``prompt``/``chosen``/
``rejected``).

The reference model is the starting checkpoint (the SFT model in the paper's pipeline): TRL
keeps a frozen copy, or, with LoRA, uses the base with the adapters switched off. Beta (the
paper's 0.01), learning rate and epochs come from ``conf/train/dpo_*.yaml``.
"""

from __future__ import annotations

from moaa_cluster.training import worker
from moaa_cluster.training.settings import TrainSettings, trainer_args


def trl_config(settings: TrainSettings, output_dir: str, *, world_size: int, use_cpu: bool):
    """The ``trl.DPOConfig`` a worker trains with; see ``sft.trl_config``."""
    from trl import DPOConfig

    return DPOConfig(**trainer_args(settings, output_dir, world_size=world_size, use_cpu=use_cpu))


def train_loop(config: dict) -> None:
    """Ray Train ``train_loop_per_worker`` for DPO."""
    from trl import DPOTrainer

    worker.run(config, trl_config, DPOTrainer)
