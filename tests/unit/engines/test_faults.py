"""What a run says and does when an engine dies: retry lines, engine state changes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from moaa_cluster.engines.faults import brief_error, is_transient, with_retries
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.engines.watch import EngineState, EngineWatcher, describe_change

# the text of the error a row got when the Gemma engine's EngineCore was SIGKILLed (abridged)
RAY_TEXT = (
    "ray::ServeReplica:moaa-gemma-3-270m:moaa-gemma-3-270m-engine.handle_request_with_rejection()"
    " (pid=12524, ip=192.0.2.2)\n"
    '  File "/x/ray/serve/_private/replica.py", line 1820, in handle_request_with_rejection\n'
    "    self._raise_user_exception(e, request_metadata)\n"
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
    "See stack trace (above) for the root cause."
)


class RayTaskError(Exception):
    pass


def test_brief_error_names_the_innermost_error_in_one_line():
    exc = RayTaskError(RAY_TEXT)
    assert is_transient(exc)
    assert brief_error(exc) == (
        "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root "
        "cause."
    )
    assert brief_error(ValueError("bad")) == "ValueError: bad"
    assert len(brief_error(ValueError("x" * 1000))) == 240


def test_retries_are_logged_in_one_line_and_counted(caplog):
    calls, seen = [], []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RayTaskError(RAY_TEXT)
        return "ok"

    with caplog.at_level(logging.WARNING, logger="moaa_cluster.engines.faults"):
        got = asyncio.run(
            with_retries(flaky, wait_s=0.0, label="row abc", on_retry=lambda n, e: seen.append(n))
        )
    assert got == "ok" and seen == [1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "row abc: transient engine error (EngineDeadError: EngineCore encountered an issue. See "
        "stack trace (above) for the root cause.); retry 1 of 3 in 0 s"
    )
    assert all("\n" not in line for line in lines) and len(lines) == 2


def test_bad_input_errors_are_not_retried():
    async def bad():
        raise ValueError("prompt too long")

    with pytest.raises(ValueError):
        asyncio.run(with_retries(bad, wait_s=0.0, label="row x"))


RUNNING = EngineState("HEALTHY", (("RUNNING", 1),))
UNHEALTHY = EngineState(
    "UNHEALTHY",
    (("STARTING", 1), ("STOPPING", 1)),
    "A replica's health check failed. This deployment will be UNHEALTHY until ...",
)
STARTING = EngineState("UNHEALTHY", (("STARTING", 1),), "A replica's health check failed.")


def test_engine_state_changes_are_described():
    assert describe_change("g", None, RUNNING, None) is None  # first sight: nothing to say
    assert describe_change("g", RUNNING, RUNNING, None) is None
    level, text = describe_change("g", RUNNING, UNHEALTHY, None)
    assert level == logging.WARNING
    assert text.startswith("engine g: UNHEALTHY (A replica's health check failed.")
    assert "1 STARTING, 1 STOPPING" in text and "retried" in text
    assert describe_change("g", UNHEALTHY, STARTING, None)[1] == "engine g: UNHEALTHY, 1 STARTING"
    assert describe_change("g", STARTING, RUNNING, 101.4)[1] == (
        "engine g: serving again after 101 s (1 RUNNING)"
    )
    assert describe_change("g", RUNNING, None, None)[1] == "engine g: no longer deployed"


def test_watcher_logs_a_death_and_the_time_to_recover(caplog):
    spec = ModelSpec(name="gemma-3-270m", path="/m")
    watcher = EngineWatcher([spec])
    app = next(iter(watcher.apps))
    with caplog.at_level(logging.INFO, logger="moaa_cluster.engines.watch"):
        for t, state in [
            (0, RUNNING),
            (5, RUNNING),
            (30, UNHEALTHY),
            (35, STARTING),
            (105, RUNNING),
        ]:
            watcher.poll({app: state}, now_t=t)
    assert watcher.events == [
        "engine gemma-3-270m: UNHEALTHY (A replica's health check failed. This deployment will "
        "be UNHEALTHY until ...); Serve is replacing the replica (1 STARTING, 1 STOPPING); rows "
        "that reach it meanwhile are retried",
        "engine gemma-3-270m: UNHEALTHY, 1 STARTING",
        "engine gemma-3-270m: serving again after 75 s (1 RUNNING)",
    ]
    assert [r.getMessage() for r in caplog.records] == watcher.events
