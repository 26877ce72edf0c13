"""Logs, in the run's own output, what Ray Serve does to the engines while rows stream.

An engine whose vLLM process dies fails Serve's health checks; Serve stops the replica and
starts a new one (measured on the 2-core CPU box: marked unhealthy ~30 s after the kill, the
new replica serving ~75 s later). Rows that reach the engine meanwhile are retried by the
pipeline (``engines.faults.with_retries``). Ray workers' logs stay in the Ray session folder
(``log_to_driver`` is off), so the driver polls Serve's status and says here when an engine
went down and when it came back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineState:
    """One engine deployment as Serve reports it."""

    status: str  # HEALTHY | UNHEALTHY | UPDATING | UPSCALING | ...
    replicas: tuple[tuple[str, int], ...]  # (replica state, count), sorted
    message: str = ""

    @property
    def healthy(self) -> bool:
        return self.status == "HEALTHY" and all(s == "RUNNING" for s, _ in self.replicas)

    def replica_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.replicas) or "no replicas"


def describe_change(
    model: str, before: EngineState | None, now: EngineState | None, down_s: float | None
) -> tuple[int, str] | None:
    """The log line (level, text) for an engine's state change, or None when nothing to say.

    Args:
        model: Engine (model) name.
        before: State at the previous poll (None: not seen yet).
        now: State now (None: the deployment is gone).
        down_s: Seconds since the engine was first seen down, when it is back up.
    """
    if before is None or now == before:
        return None
    if now is None:
        return logging.WARNING, f"engine {model}: no longer deployed"
    if before.healthy and not now.healthy:
        why = now.message.splitlines()[0] if now.message else "replica not running"
        return (
            logging.WARNING,
            f"engine {model}: {now.status} ({why}); Serve is replacing the replica "
            f"({now.replica_text()}); rows that reach it meanwhile are retried",
        )
    if not before.healthy and now.healthy:
        took = f" after {down_s:.0f} s" if down_s is not None else ""
        return logging.INFO, f"engine {model}: serving again{took} ({now.replica_text()})"
    if not now.healthy:
        return logging.INFO, f"engine {model}: {now.status}, {now.replica_text()}"
    return None


def engine_states(apps: dict[str, str]) -> dict[str, EngineState | None]:
    """Serve's view of each engine app (``{app name: model name}``), keyed by app name."""
    from ray import serve

    status = serve.status().applications
    out: dict[str, EngineState | None] = {}
    for app in apps:
        entry = status.get(app)
        if entry is None or not entry.deployments:
            out[app] = None
            continue
        dep = next(iter(entry.deployments.values()))  # one engine deployment per app
        replicas = tuple(
            sorted((str(getattr(s, "value", s)), n) for s, n in dep.replica_states.items() if n)
        )
        out[app] = EngineState(str(getattr(dep.status, "value", dep.status)), replicas, dep.message)
    return out


class EngineWatcher:
    """A daemon thread that logs engine deaths and restarts while a run streams rows.

    Use as a context manager around the part of the run that sends requests.
    """

    def __init__(self, specs: list, period_s: float = 5.0):
        from moaa_cluster.engines.serve_llm import app_name

        self.apps = {app_name(s): s.name for s in specs if s.backend == "vllm"}
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, EngineState | None] = {}
        self._down_since: dict[str, float] = {}
        self.events: list[str] = []  # every line logged

    def poll(self, states: dict[str, EngineState | None], now_t: float | None = None) -> None:
        """Compares one poll (:func:`engine_states`) with the last and logs the changes."""
        now_t = time.monotonic() if now_t is None else now_t
        for app, now in states.items():
            before = self._last.get(app)
            if now is not None and not now.healthy:
                self._down_since.setdefault(app, now_t)
            down_s = None
            if now is not None and now.healthy and app in self._down_since:
                down_s = now_t - self._down_since.pop(app)
            change = describe_change(self.apps[app], before, now, down_s)
            if change is not None:
                level, text = change
                log.log(level, text)
                self.events.append(text)
            self._last[app] = now

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                states = engine_states(self.apps)
            except Exception as exc:  # Serve busy or shutting down: try at the next tick
                log.debug("engine status unavailable: %s", exc)
                continue
            self.poll(states)

    def __enter__(self) -> EngineWatcher:
        if self.apps:
            self._thread = threading.Thread(target=self._run, name="moaa-engine-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 5)
