"""The active policy states search honours: raw query (no adapter), base model, adapter."""

from __future__ import annotations

import asyncio

from service.adapters.swap import ActiveAdapterWatcher
from service.policy.prompt import DEFAULT_PROMPT
from service.policy.protocol import RewriteResult
from service.rewriting.cache import RewriteCache
from service.rewriting.rewriter import PolicyRewriter


class RecordingPolicy:
    """A policy that answers one fixed addition and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        self.calls.append((query, adapter))
        return RewriteResult(
            text=f"{query} usb hub",
            raw_completion="usb hub",
            adapter=adapter,
            prompt_version=DEFAULT_PROMPT.version,
            latency_ms=1.0,
            answer="usb hub",
        )


def _rewriter(policy: RecordingPolicy, serve_base: bool, adapter: str | None) -> PolicyRewriter:
    watcher = ActiveAdapterWatcher(policy, "sqlite://")  # type: ignore[arg-type]
    watcher.current = adapter
    return PolicyRewriter(
        policy,  # type: ignore[arg-type]
        RewriteCache(16),
        watcher,
        DEFAULT_PROMPT,
        budget_ms=1000,
        serve_base=serve_base,
    )


def test_no_adapter_serves_the_raw_query_without_calling_the_policy() -> None:
    policy = RecordingPolicy()
    rw = asyncio.run(_rewriter(policy, False, None).rewrite("Docking Station", "docking station"))
    assert rw.text == "Docking Station" and rw.source == "none" and rw.answer is None
    assert policy.calls == []


def test_base_policy_serves_when_asked() -> None:
    policy = RecordingPolicy()
    rewriter = _rewriter(policy, True, None)
    first = asyncio.run(rewriter.rewrite("Docking Station", "docking station"))
    assert first.source == "policy" and first.text == "Docking Station usb hub"
    assert policy.calls == [("Docking Station", None)]


def test_adapter_answer_is_cached_as_additions_and_composed_per_request() -> None:
    policy = RecordingPolicy()
    rewriter = _rewriter(policy, False, "a1")

    async def two() -> tuple:
        first = await rewriter.rewrite("Docking Station", "docking station")
        again = await rewriter.rewrite("docking  station", "docking station")
        return first, again

    first, again = asyncio.run(two())
    assert first.source == "policy" and first.adapter == "a1"
    # the cache keeps the additions; each shopper's own spelling is searched
    assert again.source == "cache" and again.text == "docking  station usb hub"
    assert len(policy.calls) == 1
