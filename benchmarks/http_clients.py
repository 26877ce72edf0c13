"""What one chat call costs the caller's CPU, per HTTP client: the ``openai`` backend's share
of the orchestration ceiling (``benchmarks/orchestration.py``), measured alone.

    python -m benchmarks.http_clients --calls 6000 --in-flight 16 64

Runs ``engines.backends.OpenAIBackend`` (aiohttp, the product's) and the same backend over
one ``httpx.AsyncClient`` (what it used before), one after the other in one process, against the instant stand-in server, each with ``--in-flight`` calls
open at once (a worker's rows in flight times the calls a row makes at once). Reports, per
client: calls/s and the client process's CPU seconds per 1,000 calls (the stand-in's own CPU
is read from its ``/stats`` and reported apart). Writes ``benchmarks/results/http_clients.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from benchmarks.standin_server import fetch_stats, serve

RESULTS = Path(__file__).resolve().parent / "results" / "http_clients.json"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say one thing about topic 7 in a few words, please."},
]


def _backend(kind: str, url: str):
    from moaa_cluster.engines.backends import InferenceError, OpenAIBackend
    from moaa_cluster.engines.spec import ModelSpec

    class HttpxBackend(OpenAIBackend):
        """The openai backend's transport as it was: one ``httpx.AsyncClient``."""

        async def _post(self, body: dict) -> dict:
            import httpx

            if self._session is None:
                self._session = httpx.AsyncClient(headers=self._headers, timeout=self._timeout)
            r = await self._session.post(self._url, json=body)
            if r.status_code != 200:
                raise InferenceError(f"HTTP {r.status_code}: {r.text[:300]}")
            return r.json()

        async def close(self) -> None:
            await self._session.aclose()

    spec = ModelSpec(name="standin", path="", backend="openai", base_url=url)
    cls = {"httpx": HttpxBackend, "aiohttp": OpenAIBackend}[kind]
    return cls(spec, request_timeout_s=60.0)


async def _drive(backend, calls: int, in_flight: int) -> float:
    queue = iter(range(calls))

    async def lane() -> None:
        for _ in queue:
            c = await backend.chat(MESSAGES, {"max_tokens": 32, "temperature": 0.7})
            assert c.text

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return time.perf_counter() - t0


def measure(kind: str, url: str, calls: int, in_flight: int) -> dict:
    async def run() -> tuple[float, float]:
        backend = _backend(kind, url)
        await _drive(backend, min(200, calls), in_flight)  # warm: connections, imports
        cpu0 = time.process_time()
        wall = await _drive(backend, calls, in_flight)
        cpu = time.process_time() - cpu0
        await backend.close()
        return wall, cpu

    server0 = fetch_stats(url)["cpu_s"]
    wall, cpu = asyncio.run(run())
    server = fetch_stats(url)["cpu_s"] - server0
    return {
        "client": kind,
        "calls": calls,
        "in_flight": in_flight,
        "calls_per_s": round(calls / wall, 1),
        "client_cpu_s_per_1k_calls": round(1000 * cpu / calls, 3),
        "server_cpu_s_per_1k_calls": round(1000 * server / calls, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_clients", description=__doc__)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--in-flight", type=int, nargs="+", default=[16, 64])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    with serve(tokens=32) as url:
        for n in args.in_flight:
            for kind in ("httpx", "aiohttp"):
                rows.append(measure(kind, url, args.calls, n))
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "results": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
