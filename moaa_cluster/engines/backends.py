"""Chat backends: one small protocol, one class per way of reaching a model.

A backend turns chat messages plus sampling settings into a :class:`Completion`. The
pipeline's Ray Data workers build backends by spec and call them concurrently; adding a way
to reach models (another server type) is one class here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from moaa_cluster.engines.chat_template import FOLD, fold_system, system_mode
from moaa_cluster.engines.spec import ModelSpec

SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "stop",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_p",
    "structured_outputs",
    # the first generated tokens' alternatives (OpenAI chat API): AlpacaEval 2 reads the
    # judge's preference from them
    "logprobs",
    "top_logprobs",
)


@dataclass
class Completion:
    """One model answer and the engine's own accounting of it.

    ``system_folded`` is True when the call's system message was folded into the first
    user turn because the model's chat template has no system role
    (``engines/chat_template.py``).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    model: str
    seconds: float = 0.0
    system_folded: bool = False
    # with ``logprobs``/``top_logprobs`` asked: per generated token, its alternatives as
    # ``[{"token": str, "logprob": float}, ...]`` (None when not asked or not given)
    top_logprobs: list[list[dict]] | None = None


class InferenceError(RuntimeError):
    """A request the engine refused or failed (too long, bad arguments, ...)."""


class ChatBackend(Protocol):
    async def chat(self, messages: list[dict], sampling: dict) -> Completion: ...


def _sampling(sampling: dict) -> dict:
    unknown = set(sampling) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling keys {sorted(unknown)}; known: {SAMPLING_KEYS}")
    return {k: v for k, v in sampling.items() if v is not None}


def _prepare(messages: list[dict], system_role: str) -> tuple[list[dict], bool]:
    """The messages to send under the model's system mode, and whether any were folded."""
    if system_role != FOLD or not any(m.get("role") == "system" for m in messages):
        return messages, False
    return fold_system(messages), True


def _top_logprobs(choice: dict) -> list[list[dict]] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return [
        [
            {"token": t["token"], "logprob": float(t["logprob"])}
            for t in tok.get("top_logprobs") or []
        ]
        for tok in content
    ]


def _completion(resp: dict, model: str, seconds: float) -> Completion:
    choice = resp["choices"][0]
    usage = resp.get("usage") or {}
    return Completion(
        text=choice["message"]["content"] or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
        model=model,
        seconds=seconds,
        top_logprobs=_top_logprobs(choice),
    )


class ServeLLMBackend:
    """A vLLM engine hosted by Ray Serve LLM, reached through its deployment handle."""

    def __init__(self, spec: ModelSpec, request_timeout_s: float | None = None):
        from ray import serve

        from moaa_cluster.engines.serve_llm import app_name, deployment_name

        self.spec = spec
        self.timeout = request_timeout_s
        # decided once per backend (the tokenizer probe is cached per model and process)
        self.system_role = system_mode(spec)
        self._handle = serve.get_deployment_handle(deployment_name(spec), app_name(spec)).options(
            stream=True
        )

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        import asyncio
        import time

        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        messages, folded = _prepare(messages, self.system_role)
        # the engine's served id; a rehearsal serves several models from one engine
        request = ChatCompletionRequest(
            model=self.spec.engine_name, messages=messages, **_sampling(sampling)
        )
        t0 = time.perf_counter()
        stream = self._handle.chat.remote(request)
        try:
            resp = await asyncio.wait_for(stream.__anext__(), timeout=self.timeout)
        except asyncio.TimeoutError as exc:
            raise InferenceError(f"{self.spec.name}: no answer within {self.timeout}s") from exc
        if hasattr(resp, "model_dump"):
            resp = resp.model_dump()
        if "choices" not in resp:  # an ErrorResponse
            err = resp.get("error") or resp
            message = err.get("message", err) if isinstance(err, dict) else err
            raise InferenceError(f"{self.spec.name}: {message}")
        completion = _completion(resp, self.spec.name, time.perf_counter() - t0)
        completion.system_folded = folded
        return completion


class OpenAIBackend:
    """Any OpenAI-compatible chat server (a vLLM server the user runs, for instance).

    One ``aiohttp`` session per backend, made in the event loop that first calls it (a
    worker's), with no cap on open connections: the worker bounds the calls in flight. It
    replaced an ``httpx`` client that spent ~13x its CPU per call on the same requests
    (``benchmarks/http_clients.py``), the largest share of the orchestration ceiling.
    """

    def __init__(self, spec: ModelSpec, request_timeout_s: float | None = None):
        self.spec = spec
        self.system_role = system_mode(spec)
        key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._url = spec.base_url.rstrip("/") + "/chat/completions"
        self._timeout = request_timeout_s
        self._session = None

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        import time

        messages, folded = _prepare(messages, self.system_role)
        body = {"model": self.spec.served_name or self.spec.name, "messages": messages}
        body.update(_sampling(sampling))
        t0 = time.perf_counter()
        resp = await self._post(body)
        completion = _completion(resp, self.spec.name, time.perf_counter() - t0)
        completion.system_folded = folded
        return completion

    async def _post(self, body: dict) -> dict:
        """POSTs ``body`` to ``/chat/completions``; the response's JSON."""
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=0),
            )
        async with self._session.post(self._url, json=body) as r:
            if r.status != 200:
                text = await r.text()
                raise InferenceError(f"{self.spec.name}: HTTP {r.status}: {text[:300]}")
            return await r.json(content_type=None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_backend(spec: ModelSpec, request_timeout_s: float | None = None) -> ChatBackend:
    if spec.backend == "vllm":
        return ServeLLMBackend(spec, request_timeout_s)
    if spec.backend == "openai":
        return OpenAIBackend(spec, request_timeout_s)
    raise ValueError(f"unknown backend {spec.backend!r}")
