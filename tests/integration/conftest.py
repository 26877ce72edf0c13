"""Real-stack fixtures: packaged models prepared once, one Ray cluster for the session.

Engines started by one test stay up (``keep_engines``) for the next, so the session pays
the vLLM start-up once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moaa_cluster.models import store


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    d = store.default_models_dir()
    for name in store.PACKAGED:
        store.prepare(name, d)
    return d


@pytest.fixture(scope="session")
def ray_session(compose, models_dir, s3):
    import ray
    from omegaconf import OmegaConf

    from moaa_cluster import runtime

    cfg = compose("synth", [f"models_dir={models_dir}"])
    runtime.set_offline(cfg.cluster.env)
    runtime.init_ray(OmegaConf.to_container(cfg.cluster, resolve=True))
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def run_synth(compose, models_dir, ray_session):
    """Runs stage 1 in-process through the same builders the CLI uses; engines stay up."""
    from omegaconf import OmegaConf

    from moaa_cluster import build
    from moaa_cluster.pipeline.synth import synthesize
    from moaa_cluster.runs.options import RunOptions

    def _run(run_dir: Path, overrides: list[str]) -> dict:
        cfg = compose("synth", [f"models_dir={models_dir}", *overrides])
        mix, specs, defaults = build.mixture(cfg.mixture)
        opts = RunOptions(
            run_dir,
            OmegaConf.to_container(cfg.cluster, resolve=True),
            limit=cfg.limit,
            progress=False,
            keep_engines=True,
        )
        return synthesize(
            build.sources(cfg.dataset), mix, specs, build.synth_settings(cfg, defaults), opts
        )

    return _run
