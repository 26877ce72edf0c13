"""Shared fixtures: the repo's paths, a Hydra compose helper over the real ``conf/``, and an
S3-compatible server (moto) for run directories on object storage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# what must be set in every process of a run so nothing reaches for the network, written out
# here (not imported from the product) so the tests state it independently
TELEMETRY_OFF = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "WANDB_MODE": "disabled",
}


@pytest.fixture(scope="session")
def compose():
    """``compose(config_name, overrides)`` -> the composed DictConfig, as the CLI would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(config_name: str = "synth", overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))

    return _compose


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server for the session (``tests/s3_server.py``), its bucket empty at start.

    Its ``AWS_*`` variables are set in this process before any Ray starts here (the Ray
    fixtures ask for this one), so Ray's workers, Ray Train and Ray Data reach it too."""
    from tests.s3_server import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        saved = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
