"""The policy-backed rewriter search uses: cache → policy within a latency budget → fallback.

- With no active adapter the raw query is served and the policy is not called (unless
  `serve_base_policy` asks for the base model's rewrites).
- A cache hit answers at once (`rewrite_source="cache"`).
- A miss asks the policy with the active adapter; if the answer is not back within
  `rewrite_budget_ms`, search goes on with the raw query (`"fallback"`) and the generation is left
  to finish in the background, where it fills the cache for the next shopper.
- Identical concurrent misses share one generation.
- When the policy server is down every search falls back immediately; a health loop notices
  when it is back and the rewriter recovers by itself (`/readyz` shows `degraded` meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from service.adapters.swap import ActiveAdapterWatcher
from service.observability import POLICY_UP
from service.policy.prompt import PromptConfig
from service.policy.protocol import Policy, PolicyError, RewriteResult
from service.rewriting.cache import CachedRewrite, RewriteCache, cache_key
from service.services.rewrite import Rewrite

log = logging.getLogger(__name__)


class PolicyRewriter:
    def __init__(
        self,
        policy: Policy,
        cache: RewriteCache,
        watcher: ActiveAdapterWatcher,
        prompt: PromptConfig,
        budget_ms: float,
        health_interval_s: float = 2.0,
        serve_base: bool = False,
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.watcher = watcher
        self.prompt = prompt
        self.prompt_version = prompt.version
        self.budget_s = budget_ms / 1000.0
        self.health_interval_s = health_interval_s
        self.serve_base = serve_base
        self.up = True
        self.last_error: str | None = None
        self._pending: dict[str, asyncio.Task[RewriteResult]] = {}
        self._health_task: asyncio.Task[None] | None = None

    async def rewrite(self, query: str, normalized: str) -> Rewrite:
        adapter = self.watcher.current
        if adapter is None and not self.serve_base:
            # No adapter passed the gate: the raw query is the active policy; no generation.
            return Rewrite(query, "none", None, None)
        key = cache_key(normalized, adapter, self.prompt_version)
        hit = await self.cache.get(key)
        if hit is not None:
            text = self.prompt.search_text(query, hit.text)
            return Rewrite(text, "cache", adapter, self.prompt_version, hit.text)
        if not self.up:
            return Rewrite(query, "fallback", None, self.prompt_version)
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._generate(query, adapter, key))
            self._pending[key] = task
            task.add_done_callback(lambda _t, k=key: self._pending.pop(k, None))
        try:
            result = await asyncio.wait_for(asyncio.shield(task), self.budget_s)
        except TimeoutError:
            return Rewrite(query, "fallback", None, self.prompt_version)
        except PolicyError:
            return Rewrite(query, "fallback", None, self.prompt_version)
        if not result.ok:
            # The adapter answered but with nothing usable: name it, search with the raw query.
            return Rewrite(query, "fallback", result.adapter, self.prompt_version)
        text = self.prompt.search_text(query, result.answer)
        return Rewrite(text, "policy", result.adapter, self.prompt_version, result.answer)

    async def _generate(self, query: str, adapter: str | None, key: str) -> RewriteResult:
        with self.watcher.using(adapter):
            try:
                result = await self.policy.rewrite(query, adapter=adapter)
            except PolicyError as e:
                self._mark_down(e)
                raise
        if result.ok:
            await self.cache.set(key, CachedRewrite(result.answer or "", result.raw_completion))
        return result

    def _mark_down(self, error: Exception) -> None:
        if self.up:
            log.warning("policy unavailable, serving raw queries: %s", error)
        self.up = False
        self.last_error = str(error)[:300]
        POLICY_UP.set(0)

    async def _health_loop(self) -> None:
        while True:
            try:
                ok = await self.policy.health()
            except Exception as e:  # noqa: BLE001
                ok, self.last_error = False, str(e)[:300]
            if ok and not self.up:
                log.info("policy is back")
                # Re-load the active adapter before routing traffic to it again.
                with contextlib.suppress(Exception):
                    await self.watcher.sync_once()
            self.up = ok
            if ok:
                self.last_error = None
            POLICY_UP.set(1 if ok else 0)
            await asyncio.sleep(self.health_interval_s)

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.up,
            "degraded": not self.up,
            "active_adapter": self.watcher.current,
            "error": self.last_error or self.watcher.last_error,
            "prompt_version": self.prompt_version,
            "checked_at": time.time(),
        }

    async def start(self) -> None:
        self._health_task = asyncio.create_task(self._health_loop())
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for task in list(self._pending.values()):
            task.cancel()
        await self.cache.aclose()
        await self.policy.aclose()
