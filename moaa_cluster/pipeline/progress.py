"""Progress a user can trust: model calls done against the plan, rows finished, an ETA.

Rows finish in blocks, so a row count alone sits at 0% while every row is in flight. Model
calls finish one by one from the first minute: every worker counts its calls
(:class:`CountingBackend`) into one :class:`CallTally` actor, and the driver polls it
(:class:`Progress`). On a terminal the counts are two live bars; in a log (``ray job`` logs,
Slurm output, a pipe) they are one plain line every ``log_every_s`` seconds, no carriage
returns. The ETA comes from the measured call rate; a plan's call count is an estimate where
the work depends on the answers (a judge skips identical answers, retries a bad verdict).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

FLUSH_EVERY_S = 0.5  # a worker sends its counts at most this often (and at each row's end)


class CallTally:
    """Ray actor: the model calls and generated tokens of a task's workers, summed."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokens = 0

    def add(self, calls: int, tokens: int) -> None:
        self.calls += calls
        self.tokens += tokens

    def read(self) -> tuple[int, int]:
        return self.calls, self.tokens


class CountingBackend:
    """A chat backend that counts its finished calls into a :class:`CallTally`.

    Counts are sent at most every :data:`FLUSH_EVERY_S` seconds, fire and forget, so the
    tally costs one small actor message per worker and half second, not one per call.
    """

    def __init__(self, inner, tally) -> None:
        self.inner = inner
        self.tally = tally
        self._calls = self._tokens = 0
        self._sent = time.monotonic()

    def __getattr__(self, name: str):  # spec, system_role, ... of the wrapped backend
        return getattr(self.inner, name)

    async def chat(self, messages: list[dict], sampling: dict):
        completion = await self.inner.chat(messages, sampling)
        self._calls += 1
        self._tokens += int(completion.completion_tokens or 0)
        if time.monotonic() - self._sent >= FLUSH_EVERY_S:
            self.flush()
        return completion

    def flush(self) -> None:
        if self._calls:
            self.tally.add.remote(self._calls, self._tokens)
            self._calls = self._tokens = 0
        self._sent = time.monotonic()


def count_calls(backends: dict, tally) -> dict:
    """``backends`` with each one counting into ``tally`` (unchanged when ``tally`` is None)."""
    if tally is None:
        return backends
    return {k: CountingBackend(b, tally) for k, b in backends.items()}


def flush_all(backends: dict) -> None:
    for b in backends.values():
        if isinstance(b, CountingBackend):
            b.flush()


def tally_reader(tally) -> Callable[[], tuple[int, int]]:
    """Reads a :class:`CallTally` actor's counts (waits at most 10 s)."""
    import ray

    return lambda: ray.get(tally.read.remote(), timeout=10)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class Snapshot:
    """Counts at one moment, and what they say about the rest."""

    label: str
    rows: int
    rows_total: int
    calls: int
    calls_planned: int | None
    tokens: int
    elapsed_s: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the measured call rate (rows when no call plan or no call yet)."""
        if self.calls_planned and self.calls:
            left = max(0, self.calls_planned - self.calls)
            return left / self.calls_per_s if self.calls_per_s else None
        if self.rows:
            return (self.rows_total - self.rows) * self.elapsed_s / self.rows
        return None

    def line(self) -> str:
        plan = f"/{self.calls_planned}" if self.calls_planned else ""
        pct = (
            f" ({100 * min(self.calls, self.calls_planned) / self.calls_planned:.0f}%)"
            if self.calls_planned
            else ""
        )
        return (
            f"[{self.label}] calls {self.calls}{plan}{pct}, {self.calls_per_s:.2f}/s, "
            f"{self.tokens} tokens | rows {self.rows}/{self.rows_total} | "
            f"elapsed {_duration(self.elapsed_s)}, ETA {_duration(self.eta_s)}"
        )


class Progress:
    """The driver's view of a task's progress: call and row counts, shown as they move.

    Use as a context manager around the row loop; call :meth:`rows_done` as blocks are
    written. ``read`` returns the calls and tokens so far (a :class:`CallTally`'s, see
    :func:`tally_reader`); None: rows only.
    """

    def __init__(
        self,
        label: str,
        rows_total: int,
        calls_planned: int | None,
        read: Callable[[], tuple[int, int]] | None = None,
        *,
        enabled: bool = True,
        log_every_s: float = 30.0,
        stream=None,
    ) -> None:
        self.label = label
        self.rows_total = rows_total
        self.calls_planned = calls_planned
        self.read = read
        self.enabled = enabled
        self.log_every_s = log_every_s
        self.stream = stream or sys.stderr
        self.rows = self.calls = self.tokens = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: tuple | None = None

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.label,
            self.rows,
            self.rows_total,
            self.calls,
            self.calls_planned,
            self.tokens,
            time.monotonic() - self._t0,
        )

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        if not self.enabled:
            return self
        plan = f", about {self.calls_planned} model calls" if self.calls_planned else ""
        self._print(f"[{self.label}] started: {self.rows_total} rows{plan}")
        if self.stream.isatty():
            from tqdm.auto import tqdm

            calls = tqdm(
                total=self.calls_planned, desc=f"{self.label} calls", unit="call", position=0
            )
            rows = tqdm(total=self.rows_total, desc=f"{self.label} rows", unit="row", position=1)
            self._bars = (calls, rows)
        self._thread = threading.Thread(target=self._watch, daemon=True, name="moaa-progress")
        self._thread.start()
        return self

    def rows_done(self, n: int) -> None:
        self.rows += n
        if self._bars:
            self._bars[1].update(n)

    def _poll(self) -> None:
        if self.read is None:
            return
        try:
            calls, tokens = self.read()
        except Exception:  # a slow or lost poll only delays the display
            return
        if self._bars and calls > self.calls:
            self._bars[0].update(calls - self.calls)
        self.calls, self.tokens = calls, tokens

    def _watch(self) -> None:
        last_line = time.monotonic()
        while not self._stop.wait(1.0):
            self._poll()
            if not self._bars and time.monotonic() - last_line >= self.log_every_s:
                self._print(self.snapshot().line())
                last_line = time.monotonic()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if not self.enabled:
            return
        self._poll()
        if self._bars:
            for bar in self._bars:
                bar.close()
        s = self.snapshot()
        self._print(
            f"[{self.label}] {'stopped' if exc[0] else 'finished'}: {s.rows}/{s.rows_total} "
            f"rows, {s.calls} model calls, {s.tokens} tokens in {_duration(s.elapsed_s)}"
        )
