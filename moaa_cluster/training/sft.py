"""SFT recipe: TRL ``SFTTrainer`` on the MoA-synthesized conversations (``messages``).

Loss on the whole conversation as TRL computes it for conversational data; packing, max
length, learning rate and epochs come from ``conf/train/sft_*.yaml``. Runs in every Ray Train
worker of ``ray_train.fit``.
"""

from __future__ import annotations

from moaa_cluster.training import worker


def train_loop(config: dict) -> None:
    """Ray Train ``train_loop_per_worker`` for SFT."""
    from trl import SFTConfig, SFTTrainer

    worker.run(config, SFTConfig, SFTTrainer)
