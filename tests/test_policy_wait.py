"""Promotion and warm-up wait for a policy server that is starting or restarting (within their
time limit) instead of failing the adapter; a refusal from a server that answers still fails
at once. The policy below is unreachable exactly as the real client reports it
(`PolicyUnreachable`, checked against a closed port at the end), for a set number of calls."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from service.adapters.registry import register_adapter
from service.adapters.swap import activate
from service.db.engine import session_scope
from service.db.models import utcnow
from service.errors import Unavailable
from service.policy.client import VllmPolicyClient
from service.policy.protocol import PolicyError, PolicyUnreachable, RewriteResult
from service.policy.server import free_port
from service.repositories.adapters import active_adapter
from service.repositories.searches import add_searches
from service.rewriting.warmup import WarmupConfig, WarmupStatus


class StartingServer:
    """A policy server that does not answer its next `down` calls (starting, or restarting:
    a restart also forgets the adapters it had loaded, as vLLM does)."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.loaded: set[str] = set()
        self.calls = 0
        self.unreachable = 0
        self.restart_after_rewrites: int | None = None

    def restart(self, down: int) -> None:
        self.down, self.loaded = down, set()

    def _answer(self) -> None:
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            self.unreachable += 1
            raise PolicyUnreachable("connection refused")

    async def list_models(self) -> list[str]:
        self._answer()
        return ["base", *sorted(self.loaded)]

    async def load_adapter(self, name: str, path: Path | str, load_inplace: bool = False) -> None:
        self._answer()
        self.loaded.add(name)

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        self._answer()
        if adapter is not None and adapter not in self.loaded:
            raise PolicyError(f"the model `{adapter}` does not exist")  # vLLM's 404
        if self.restart_after_rewrites is not None:
            self.restart_after_rewrites -= 1
            if self.restart_after_rewrites == 0:
                self.restart(down=3)
        return RewriteResult(f"{query} extra", "extra", adapter, "v1", 1.0, answer="extra")


@pytest.fixture
def candidate(db_url: str, tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    register_adapter(db_url, tmp_path / "adapters", "cand1", src, "base")
    rows = [
        {
            "id": str(uuid.uuid4()), "query": q, "normalized_query": q, "rewrite": q,
            "rewrite_source": "none", "k": 10, "product_ids": [], "scores": [],
            "latency_ms": 1.0, "created_at": utcnow(),
        }
        for q in ("usb hub", "desk lamp", "mug", "hdmi cable", "office chair")
    ]  # fmt: skip
    with session_scope(db_url) as s:
        add_searches(s, rows)
    return "cand1"


def _active(url: str) -> str | None:
    with session_scope(url) as s:
        row = active_adapter(s)
        return row.name if row else None


def test_a_promotion_waits_for_a_starting_policy_server_then_flips(
    db_url: str, candidate: str
) -> None:
    server = StartingServer(down=3)
    result = asyncio.run(
        activate(server, db_url, candidate, WarmupConfig(queries=10, time_limit_s=60), wait_s=60)
    )
    assert server.unreachable == 3  # it was refused, and waited instead of failing
    assert result.active == candidate and _active(db_url) == candidate
    assert result.warmup["status"] == WarmupStatus.done
    assert result.warmup["generated"] == 5 and result.warmup["failed"] == 0


def test_a_promotion_fails_only_after_its_time_limit(db_url: str, candidate: str) -> None:
    server = StartingServer(down=10**9)  # never comes up
    with pytest.raises(Unavailable, match="could not be served"):
        asyncio.run(activate(server, db_url, candidate, WarmupConfig(), wait_s=1.5))
    assert server.unreachable > 1  # retried with backoff before giving up
    assert _active(db_url) is None  # the pointer did not move


def test_without_a_wait_an_unreachable_server_fails_at_once(db_url: str, candidate: str) -> None:
    """`warm=false` from the API: the request itself must not hang."""
    server = StartingServer(down=1)
    with pytest.raises(Unavailable):
        asyncio.run(activate(server, db_url, candidate))
    assert server.calls == 1


def test_a_restart_during_warm_up_is_waited_for_and_the_adapter_loaded_again(
    db_url: str, candidate: str
) -> None:
    server = StartingServer()
    server.restart_after_rewrites = 3  # the canary, then two warm-up rewrites
    result = asyncio.run(
        activate(
            server, db_url, candidate,
            WarmupConfig(queries=10, time_limit_s=60, concurrency=1), wait_s=60,
        )
    )  # fmt: skip
    assert server.unreachable == 3 and candidate in server.loaded  # loaded again after it
    assert result.warmup["status"] == WarmupStatus.done
    assert result.warmup["done"] == result.warmup["total"] == 5
    assert result.warmup["failed"] == 0


def test_the_vllm_client_reports_a_server_that_is_not_there_as_unreachable() -> None:
    async def calls() -> list[type[BaseException]]:
        client = VllmPolicyClient(f"http://127.0.0.1:{free_port()}", timeout_s=5)
        errors = []
        for call in (
            client.list_models(),
            client.load_adapter("a", "/tmp"),
            client.rewrite("usb hub", adapter="a"),
        ):
            try:
                await call
            except PolicyError as e:
                errors.append(type(e))
        await client.aclose()
        return errors

    assert asyncio.run(calls()) == [PolicyUnreachable] * 3
