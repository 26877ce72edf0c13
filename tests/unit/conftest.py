"""Unit-test fixtures: Ray for the tests of steps that are Ray Data plans."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local(compose, s3):
    """The local Ray the product starts (``conf/cluster/local.yaml``), for the unit tests that
    run a Ray Data plan.

    The same session the integration tests' ``ray_session`` starts, and left up like it: `make
    test` runs both in one process, so the integration tests find Ray as they would have
    started it (its resources, its environment), and Ray is never restarted in the process."""
    from omegaconf import OmegaConf
    from ray.data import DataContext

    from moaa_cluster import runtime

    cfg = compose("synth")
    runtime.set_offline(cfg.cluster.env)
    runtime.init_ray(OmegaConf.to_container(cfg.cluster, resolve=True))
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
