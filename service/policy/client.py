"""Async client of the vLLM OpenAI-compatible server: rewrites and runtime LoRA management.

One `httpx.AsyncClient` with a connection pool as large as the concurrency cap, and an
`asyncio.Semaphore` that bounds in-flight requests without serialising them: vLLM batches
concurrent requests, which is where its throughput comes from (~7x at 8 concurrent on CPU).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.domain import model_name
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from service.policy.protocol import (
    AdapterError,
    PolicyBusy,
    PolicyError,
    PolicyUnreachable,
    RewriteResult,
)

# No server behind the address (yet): refused or reset connections, and the statuses a proxy
# answers for a backend that is down. Timeouts of a connected request are PolicyBusy instead.
UNREACHABLE = (httpx.ConnectError, httpx.RemoteProtocolError)
UNAVAILABLE_STATUSES = (502, 503)


@dataclass(frozen=True)
class SampledTokens:
    """One sampled completion as the server's token ids (see `sample_token_ids`)."""

    token_ids: list[int]
    finish_reason: str | None


class VllmPolicyClient:
    """The `Policy` backed by a running vLLM server (see `service.policy.server`)."""

    def __init__(
        self,
        base_url: str,
        *,
        prompt: PromptConfig = DEFAULT_PROMPT,
        max_concurrency: int = 32,
        timeout_s: float = 30.0,
        max_tokens: int | None = None,
        max_chars: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.prompt = prompt
        self.max_tokens = max_tokens if max_tokens is not None else prompt.max_tokens
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self._max_concurrency = max_concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            transport=transport,
        )

    @property
    def semaphore(self) -> asyncio.Semaphore:
        # Created lazily so the client can be built outside a running event loop.
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._max_concurrency)
        return self._semaphore

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        """Greedy rewrite of `query` by the base model or the named adapter."""
        results = await self._chat(query, adapter, n=1, overrides={})
        return results[0]

    async def sample(
        self,
        query: str,
        adapter: str | None = None,
        *,
        n: int = 8,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[RewriteResult]:
        """`n` sampled rewrites in one request (online rollouts, exploration)."""
        overrides: dict[str, Any] = {"temperature": temperature}
        if seed is not None:
            overrides["seed"] = seed
        return await self._chat(query, adapter, n=n, overrides=overrides)

    async def sample_token_ids(
        self,
        prompt_ids: list[int],
        adapter: str | None = None,
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        stop: list[str],
        seed: int | None = None,
    ) -> list[SampledTokens]:
        """`n` completions of an already tokenised prompt, as token ids (training rollouts).

        Pure sampling (top-p 1, no top-k): softmax(logits / temperature), what the trainer's
        loss assumes. The ids run through the token that ended a completion (EOS, or the one
        that completed a stop string); the caller decodes them with its own tokenizer.
        """
        body: dict[str, Any] = {
            "model": model_name(adapter),
            "prompt": prompt_ids,
            "n": n,
            "temperature": temperature,
            "top_p": 1.0,
            "max_tokens": max_tokens,
            "stop": stop,
            "return_token_ids": True,
        }
        if seed is not None:
            body["seed"] = seed
        async with self.semaphore:
            data = await self._post_json("/v1/completions", body, n)
        try:
            return [
                SampledTokens(list(c["token_ids"]), c.get("finish_reason"))
                for c in sorted(data["choices"], key=lambda c: c["index"])
            ]
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"malformed completion response: {data!r:.300}") from exc

    async def _chat(
        self, query: str, adapter: str | None, *, n: int, overrides: dict[str, Any]
    ) -> list[RewriteResult]:
        body: dict[str, Any] = {
            "model": model_name(adapter),
            "messages": self.prompt.build_messages(query),
            "n": n,
            **self.prompt.sampling_params(self.max_tokens),
            **overrides,
        }
        async with self.semaphore:
            started = time.perf_counter()
            data = await self._post_json("/v1/chat/completions", body)
            latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            choices = data["choices"]
            usage = data.get("usage") or {}
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"malformed completion response: {data!r:.300}") from exc
        tokens = usage.get("completion_tokens") if n == 1 else None
        results = [self._result(query, adapter, c, latency_ms, tokens) for c in choices]
        if not results:
            raise PolicyError("completion response without choices")
        return results

    async def rewrite_many(
        self, queries: list[str], adapter: str | None = None
    ) -> list[RewriteResult]:
        """Greedy rewrites of many queries in ONE request (vLLM's `/v1/chat/completions/batch`):
        the engine schedules them all at once, for bulk work such as the warm-up."""
        if not queries:
            return []
        body: dict[str, Any] = {
            "model": model_name(adapter),
            "messages": [self.prompt.build_messages(q) for q in queries],
            **self.prompt.sampling_params(self.max_tokens),
        }
        async with self.semaphore:
            started = time.perf_counter()
            data = await self._post_json("/v1/chat/completions/batch", body, len(queries))
            latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            choices = sorted(data["choices"], key=lambda c: c["index"])
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"malformed batch response: {data!r:.300}") from exc
        if len(choices) != len(queries):
            raise PolicyError(f"{len(queries)} conversations, {len(choices)} choices")
        return [
            self._result(q, adapter, c, latency_ms, None)
            for q, c in zip(queries, choices, strict=True)
        ]

    def _result(
        self,
        query: str,
        adapter: str | None,
        choice: dict[str, Any],
        latency_ms: float,
        completion_tokens: int | None,
    ) -> RewriteResult:
        """One choice of a chat completion, parsed as serving parses it."""
        completion = (choice.get("message") or {}).get("content") or ""
        finish_reason = choice.get("finish_reason")
        answer = self.prompt.parse(
            completion, query, truncated=finish_reason == "length", max_chars=self.max_chars
        )
        return RewriteResult(
            text=self.prompt.search_text(query, answer),
            answer=answer,
            raw_completion=completion,
            adapter=adapter,
            prompt_version=self.prompt.version,
            latency_ms=latency_ms,
            ok=answer is not None,
            finish_reason=finish_reason,
            completion_tokens=completion_tokens,
        )

    async def health(self) -> bool:
        """True when the server answers `/health` with 200 (never raises)."""
        try:
            response = await self._http.get("/health", timeout=min(5.0, self.timeout_s))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[str]:
        """Served model names: `base` and every loaded adapter."""
        data = await self._get_json("/v1/models")
        return [entry["id"] for entry in data.get("data", [])]

    async def model_roots(self) -> dict[str, str]:
        """{served name: the folder it was loaded from} (`base`: the base model's folder)."""
        data = await self._get_json("/v1/models")
        return {entry["id"]: entry.get("root") or "" for entry in data.get("data", [])}

    async def load_adapter(self, name: str, path: Path | str, load_inplace: bool = False) -> None:
        """Load a LoRA adapter folder under `name`.

        `load_inplace=True` replaces an adapter already loaded under `name` (hot-swap). vLLM
        does not invalidate prefix-cache blocks when reloading from the *same* path, so a new
        adapter version must live in a new folder.
        """
        body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
        if load_inplace:
            body["load_inplace"] = True
        await self._adapter_call("/v1/load_lora_adapter", body)

    async def unload_adapter(self, name: str) -> None:
        await self._adapter_call("/v1/unload_lora_adapter", {"lora_name": name})

    async def _adapter_call(self, path: str, body: dict[str, Any]) -> None:
        try:
            response = await self._http.post(path, json=body)
        except UNREACHABLE as exc:
            raise PolicyUnreachable(f"{path} failed: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise AdapterError(f"{path} failed: {exc!r}") from exc
        _raise_if_unavailable(path, response)
        if response.status_code != 200:
            raise AdapterError(f"{path} {body['lora_name']!r}: {_error_message(response)}")

    async def _post_json(
        self, path: str, body: dict[str, Any], generations: int = 1
    ) -> dict[str, Any]:
        """POST within ``timeout_s`` per generation the request holds: a batch of n may wait for
        n generations on a busy engine (the warm-up's batches timed out at one's allowance)."""
        timeout_s = self.timeout_s * generations
        timeout = httpx.Timeout(timeout_s, connect=min(5.0, self.timeout_s))
        try:
            response = await self._http.post(path, json=body, timeout=timeout)
        except httpx.ConnectTimeout as exc:
            raise PolicyUnreachable(f"{path}: no connection within the timeout") from exc
        except UNREACHABLE as exc:
            raise PolicyUnreachable(f"{path} failed: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise PolicyBusy(f"{path} timed out after {timeout_s} s") from exc
        except httpx.HTTPError as exc:
            raise PolicyError(f"{path} failed: {exc!r}") from exc
        return _json_or_raise(path, response)

    async def _get_json(self, path: str) -> dict[str, Any]:
        try:
            response = await self._http.get(path)
        except UNREACHABLE as exc:
            raise PolicyUnreachable(f"{path} failed: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise PolicyError(f"{path} failed: {exc!r}") from exc
        return _json_or_raise(path, response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> VllmPolicyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _raise_if_unavailable(path: str, response: httpx.Response) -> None:
    # A proxy or load balancer in front of a server that is (re)starting.
    if response.status_code in UNAVAILABLE_STATUSES:
        raise PolicyUnreachable(f"{path} -> HTTP {response.status_code}")


def _json_or_raise(path: str, response: httpx.Response) -> dict[str, Any]:
    _raise_if_unavailable(path, response)
    if response.status_code != 200:
        raise PolicyError(f"{path} -> HTTP {response.status_code}: {_error_message(response)}")
    try:
        data = response.json()
    except ValueError as exc:
        raise PolicyError(f"{path} returned non-JSON: {response.text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path} returned {type(data).__name__}, expected an object")
    return data


def _error_message(response: httpx.Response) -> str:
    """vLLM errors look like {"error": {"message": ...}}; fall back to the raw body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if data.get("message"):
            return str(data["message"])
    return str(data)[:300]
