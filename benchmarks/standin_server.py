"""An instant OpenAI-compatible chat server: model time taken out of a benchmark.

    python -m benchmarks.standin_server --port 0 --tokens 32     # prints its URL, then serves

Every ``POST /v1/chat/completions`` is answered at once with the same ``--tokens`` words
(fewer when the request's ``max_tokens`` is smaller: then ``finish_reason`` is ``length``,
as a real server says it), in the response shape ``engines.backends.OpenAIBackend`` reads:
``choices[0].message.content``, ``finish_reason`` and ``usage`` (``prompt_tokens`` is the
number of whitespace-separated words in the messages: a cheap stand-in for a tokenizer).
A request that asks for ``logprobs`` gets a ``logprobs.content`` list with one entry per
word (``top_logprobs`` alternatives as asked). ``GET /v1/models`` lists the models asked
for so far, ``GET /health`` answers 200, and ``GET /stats`` returns the requests served and
the server's own CPU seconds (JSON), so a benchmark can count calls and charge the stand-in's
share of the CPU separately.

One process, one event loop (aiohttp), no access log: on a 2-core machine it still takes a
share of the CPU, which ``/stats`` reports. :func:`serve` runs it as a subprocess for a test
or a benchmark and yields its base URL (``http://127.0.0.1:PORT/v1``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def answer_text(n: int) -> str:
    """``n`` words of filler text (a fixed cycle of words)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def prompt_words(messages: object) -> int:
    """Words in the messages' text (string contents or OpenAI text parts)."""
    total = 0
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


def _logprobs(n: int, top: int) -> dict:
    """A ``logprobs.content`` block with one entry per generated word."""
    content = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        alts = [{"token": word, "logprob": -0.1, "bytes": None}]
        alts += [{"token": f"alt{k}", "logprob": -3.0 - k, "bytes": None} for k in range(top - 1)]
        content.append({"token": word, "logprob": -0.1, "bytes": None, "top_logprobs": alts[:top]})
    return {"content": content}


def completion(body: dict, tokens: int, created: int) -> dict:
    """The chat completion answering ``body``: ``tokens`` words, or ``max_tokens`` if fewer."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    n = tokens if not isinstance(limit, int) or limit <= 0 else min(tokens, limit)
    prompt = prompt_words(body.get("messages"))
    choice: dict = {
        "index": 0,
        "message": {"role": "assistant", "content": answer_text(n)},
        "finish_reason": "length" if n < tokens else "stop",
        "logprobs": None,
    }
    if body.get("logprobs"):
        choice["logprobs"] = _logprobs(n, max(1, int(body.get("top_logprobs") or 1)))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or "standin",
        "choices": [choice],
        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_app(tokens: int):
    """The aiohttp application: chat completions, models, health and stats."""
    from aiohttp import web

    state = {"requests": 0, "errors": 0, "models": {}, "started": time.time()}

    async def chat(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            state["errors"] += 1
            err = {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}}
            return web.json_response(err, status=400)
        state["requests"] += 1
        out = completion(body, tokens, int(time.time()))
        state["models"][out["model"]] = state["models"].get(out["model"], 0) + 1
        return web.Response(text=json.dumps(out), content_type="application/json")

    async def models(_: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": int(state["started"]), "owned_by": "standin"}
            for m in sorted(state["models"]) or ["standin"]
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": state["requests"],
                "errors": state["errors"],
                "per_model": dict(state["models"]),
                "cpu_s": round(cpu_seconds(), 3),
                "uptime_s": round(time.time() - state["started"], 3),
                "tokens": tokens,
                "pid": os.getpid(),
            }
        )

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


async def _run(host: str, port: int, tokens: int) -> None:
    import asyncio

    from aiohttp import web

    # a client killed mid-request (a benchmark's SIGKILL) is expected: no traceback for it
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    runner = web.AppRunner(make_app(tokens), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # the port the OS chose for --port 0
    print(f"http://{host}:{bound}/v1", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def fetch_stats(base_url: str, timeout_s: float = 10.0) -> dict:
    """``GET /stats`` of the server at ``base_url`` (``http://host:port/v1``)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/stats", timeout=timeout_s) as r:
        return json.loads(r.read())


@contextmanager
def serve(tokens: int = 32, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Runs the stand-in server as a subprocess; yields ``http://127.0.0.1:PORT/v1``.

    The server is in its own session (a benchmark that kills a process group of its own
    leaves it alone) and is stopped on exit.

    Raises:
        RuntimeError: The server did not print its URL within ``startup_timeout_s``.
    """
    import selectors

    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "benchmarks.standin_server", "--port", "0"]
    cmd += ["--tokens", str(tokens)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(startup_timeout_s):
            raise RuntimeError(f"stand-in server printed no URL within {startup_timeout_s:.0f}s")
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"stand-in server failed to start (exit {proc.poll()}): {url!r}")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.standin_server",
        description=__doc__.split("\n\n")[0],
        epilog="The first line on stdout is the base URL (http://HOST:PORT/v1); "
        "GET /stats gives the requests served and the server's CPU seconds.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--tokens", type=int, default=32, help="words in every answer (default 32)")
    args = p.parse_args(argv)
    if args.tokens < 1:
        p.error("--tokens must be >= 1")
    import asyncio

    try:
        asyncio.run(_run(args.host, args.port, args.tokens))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
