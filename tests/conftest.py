"""Shared fixtures: the repo's paths and a Hydra compose helper over the real ``conf/``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def compose():
    """``compose(config_name, overrides)`` -> the composed DictConfig, as the CLI would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(config_name: str = "synth", overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))

    return _compose
