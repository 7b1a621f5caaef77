"""The vLLM client against a fake OpenAI-compatible server (httpx.MockTransport); the factory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.policy.client import VllmPolicyClient
from service.policy.factory import NullPolicy, make_policy
from service.policy.protocol import AdapterError, Policy, PolicyError
from service.settings import Settings


class FakeVllm:
    """Records requests; answers chat completions after an async delay to expose concurrency."""

    def __init__(self, content: str = "hdmi cable 2 metre", delay_s: float = 0.05) -> None:
        self.content = content
        self.delay_s = delay_s
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.adapters: set[str] = set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            names = ["base", *sorted(self.adapters)]
            return httpx.Response(200, json={"data": [{"id": n} for n in names]})
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.adapters and not body.get("load_inplace"):
                return httpx.Response(400, json={"error": {"message": "already loaded"}})
            self.adapters.add(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            if body["lora_name"] not in self.adapters:
                return httpx.Response(404, json={"error": {"message": "cannot be found"}})
            self.adapters.discard(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            if body["model"] not in {"base", *self.adapters}:
                return httpx.Response(404, json={"error": {"message": "model not found"}})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            choices = [
                {"index": i, "message": {"content": self.content}, "finish_reason": "stop"}
                for i in range(body.get("n", 1))
            ]
            return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 5}})
        return httpx.Response(404)


def _client(fake: FakeVllm, **kwargs: Any) -> VllmPolicyClient:
    return VllmPolicyClient("http://vllm.test", transport=httpx.MockTransport(fake), **kwargs)


def test_rewrite_sends_prompt_and_parses() -> None:
    fake = FakeVllm(content="Extra terms: hdmi lead, 2 metre")

    async def run() -> Any:
        async with _client(fake, max_tokens=20) as client:
            return await client.rewrite("hdmi cable 2m")

    result = asyncio.run(run())
    assert result.answer == "hdmi lead, 2 metre"  # expand mode: the additions ...
    assert result.text == "hdmi cable 2m hdmi lead, 2 metre"  # ... searched with the query
    assert result.ok and result.adapter is None and result.completion_tokens == 5
    assert result.raw_completion == "Extra terms: hdmi lead, 2 metre"
    path, body = fake.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["model"] == "base"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 20
    assert "hdmi cable 2m" in body["messages"][-1]["content"]


def test_rewrite_falls_back_on_junk_completion() -> None:
    fake = FakeVllm(content="...")

    async def run() -> Any:
        async with _client(fake) as client:
            return await client.rewrite("usb hub")

    result = asyncio.run(run())
    assert (result.text, result.ok) == ("usb hub", False)


def test_concurrency_is_bounded_but_not_serialised() -> None:
    fake = FakeVllm(delay_s=0.1)

    async def run() -> None:
        async with _client(fake, max_concurrency=4) as client:
            await asyncio.gather(*(client.rewrite(f"q{i}") for i in range(12)))

    asyncio.run(run())
    assert fake.max_in_flight == 4


def test_adapter_lifecycle_and_errors() -> None:
    fake = FakeVllm()

    async def run() -> None:
        async with _client(fake) as client:
            assert await client.health()
            await client.load_adapter("v1", Path("/adapters/v1"))
            assert await client.list_models() == ["base", "v1"]
            with pytest.raises(AdapterError, match="already loaded"):
                await client.load_adapter("v1", "/adapters/v1b")
            await client.load_adapter("v1", "/adapters/v1b", load_inplace=True)
            result = await client.rewrite("tv", adapter="v1")
            assert result.adapter == "v1"
            await client.unload_adapter("v1")
            with pytest.raises(AdapterError, match="cannot be found"):
                await client.unload_adapter("v1")
            with pytest.raises(PolicyError, match="model not found"):
                await client.rewrite("tv", adapter="v1")

    asyncio.run(run())
    loads = [body for path, body in fake.requests if path == "/v1/load_lora_adapter"]
    assert loads[0] == {"lora_name": "v1", "lora_path": "/adapters/v1"}
    assert loads[-1]["load_inplace"] is True


def test_sample_returns_n_results() -> None:
    fake = FakeVllm()

    async def run() -> Any:
        async with _client(fake) as client:
            return await client.sample("tv", n=3, temperature=1.0, seed=1)

    results = asyncio.run(run())
    assert len(results) == 3
    body = fake.requests[-1][1]
    assert body["n"] == 3 and body["temperature"] == 1.0 and body["seed"] == 1


def test_unreachable_server_raises_policy_error_and_is_unhealthy() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def run() -> None:
        client = VllmPolicyClient("http://vllm.test", transport=httpx.MockTransport(refuse))
        async with client:
            assert not await client.health()
            with pytest.raises(PolicyError):
                await client.rewrite("tv")

    asyncio.run(run())


def test_timeout_raises_policy_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async def run() -> None:
        async with VllmPolicyClient(
            "http://vllm.test", transport=httpx.MockTransport(slow), timeout_s=0.5
        ) as client:
            with pytest.raises(PolicyError, match="timed out"):
                await client.rewrite("tv")

    asyncio.run(run())


def test_make_policy_picks_backend(tmp_path: Path) -> None:
    vllm = make_policy(Settings(policy_backend="vllm", data_dir=tmp_path))
    assert isinstance(vllm, VllmPolicyClient)
    assert isinstance(vllm, Policy)
    asyncio.run(vllm.aclose())

    none = make_policy(Settings(policy_backend="none", data_dir=tmp_path))
    assert isinstance(none, NullPolicy)
    result = asyncio.run(none.rewrite("usb hub"))
    assert (result.text, result.ok, result.adapter) == ("usb hub", False, None)
    with pytest.raises(AdapterError):
        asyncio.run(none.load_adapter("x", tmp_path))
