"""Unit-test fixtures: a small local Ray for the tests of steps that are Ray Data plans."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (1 CPU, no dashboard) for the unit tests that run a Ray Data plan."""
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
