"""Unit-test fixtures: a small local Ray for the tests of steps that are Ray Data plans."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A small local Ray (no dashboard) for a module of unit tests that run Ray Data plans.

    Shut down after the module: `make test` runs the integration tests in the same process,
    and their session Ray must start with the cluster config's resources and environment."""
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
    if started:
        ray.shutdown()
