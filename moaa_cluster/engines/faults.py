"""Engine faults a row lives through: which errors are transient, and retrying through them.

An engine that dies (its vLLM process killed, a replica restarting) fails the calls that
reach it meanwhile; Ray Serve restarts it (``engines/watch.py`` logs when). Such errors are
told from bad input by their text (:func:`is_transient`), and the work that hit one is tried
again after a wait (:func:`with_retries`; the pipeline's row frame retries each row's work).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

TRANSIENT_MARKERS = (
    "EngineDeadError",
    "EngineGenerateError",
    "ActorDiedError",
    "ActorUnavailableError",
    "RayActorError",
    "DeploymentUnavailableError",
    "BackPressureError",
    "TimeoutError",
    "ConnectError",
    "ReadTimeout",
    "RemoteProtocolError",
    # aiohttp (the openai backend): refused, dropped or reset connections
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "HTTP 503",
    "HTTP 502",
)


def is_transient(exc: BaseException) -> bool:
    """Errors that a restarted engine or a moment's wait can fix (not bad input)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def brief_error(exc: BaseException, limit: int = 240) -> str:
    """One line for a log: the innermost ``Type: message`` of an error.

    Errors from a Ray actor carry the remote traceback in their text; its last line names
    the error that actually happened (``...EngineDeadError: EngineCore encountered ...``).
    """
    lines = [ln.strip() for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:  # vllm.v1.engine.exceptions.EngineDeadError
        last = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return last if len(last) <= limit else last[: limit - 3] + "..."


async def with_retries(
    fn,
    *,
    attempts: int = 4,
    wait_s: float = 20.0,
    on_retry=None,
    label: str | None = None,
):
    """Awaits ``fn()``; on a transient error waits (doubling) and tries again.

    An engine that dies is restarted by Serve's health check: measured on the 2-core CPU
    box, Serve marks it unhealthy ~30 s after the kill and the new replica serves ~75 s
    later. The default schedule (20 + 40 + 80 s) outlasts that. Other errors propagate at
    once.

    Args:
        fn: Coroutine function to await (called again for each attempt).
        attempts: Tries in all.
        wait_s: Wait before the first retry; doubled before each later one.
        on_retry: Called as ``on_retry(attempt, exc)`` before each wait.
        label: What is retried (``"row <id>"``); when given, each retry is logged in one
            line with the error and the wait.
    """
    import asyncio

    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            wait = wait_s * 2 ** (attempt - 1)
            if label is not None:
                log.warning(
                    "%s: transient engine error (%s); retry %d of %d in %.0f s",
                    label,
                    brief_error(exc),
                    attempt,
                    attempts - 1,
                    wait,
                )
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
