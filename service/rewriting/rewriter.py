"""The policy-backed rewriter search uses: rewrite store → (maybe) policy → raw query.

- With no active adapter the raw query is served and the policy is not called (unless
  `serve_base_policy` asks for the base model's rewrites).
- A stored rewrite (`service.rewriting.store`: local LRU, Redis, database) answers at once
  (`rewrite_source="cache"`); head queries are stored before an adapter is promoted.
- A miss is answered with the raw query (`"fallback"`) and rewritten for the next shopper:
  - `rewrite_misses=deferred` (default): by the serving worker's periodic refresh, which
    rewrites the queries missed since the last one in a batch (the search log is the queue).
    On a CPU host a generation running beside the API slows every search on the box, so no
    API process generates;
  - `background`: this process asks the policy at once and stores the answer; search waits
    for it at most `rewrite_budget_ms` (0 by default; a GPU deployment sets about its p99
    generation time). Identical concurrent misses share one generation; at most
    `rewrite_max_pending` are in flight per process, and a miss beyond that is not queued
    (its next search asks again), so a burst of new queries cannot pile up work.
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
from service.background import BackgroundLoop
from service.domain import MissPolicy, RewriteSource
from service.observability import POLICY_UP, REWRITE_BACKGROUND, REWRITE_HIT_RATIO
from service.policy.prompt import PromptConfig
from service.policy.protocol import Policy, PolicyBusy, PolicyError, RewriteResult
from service.rewriting.rewrite import Rewrite
from service.rewriting.store import RewriteStore, StoredAnswer, cache_key

log = logging.getLogger(__name__)


class PolicyRewriter:
    def __init__(
        self,
        policy: Policy,
        store: RewriteStore,
        watcher: ActiveAdapterWatcher,
        prompt: PromptConfig,
        budget_ms: float,
        health_interval_s: float = 2.0,
        serve_base: bool = False,
        max_pending: int = 8,
        misses: MissPolicy = MissPolicy.background,
    ) -> None:
        self.policy = policy
        self.store = store
        self.watcher = watcher
        self.max_pending = max_pending
        self.misses = misses
        self.lookups = {"hit": 0, "miss": 0}
        self.prompt = prompt
        self.prompt_version = prompt.version
        self.budget_s = budget_ms / 1000.0
        self.health_interval_s = health_interval_s
        self.serve_base = serve_base
        self.up = True
        self.last_error: str | None = None
        self._pending: dict[str, asyncio.Task[RewriteResult]] = {}
        self._health = BackgroundLoop("policy health", self._check_health, health_interval_s)

    async def rewrite(self, query: str, normalized: str) -> Rewrite:
        adapter = self.watcher.current
        if adapter is None and not self.serve_base:
            # No adapter passed the gate: the raw query is the active policy; no generation.
            return Rewrite(query, RewriteSource.none, None, None)
        hit = await self.store.get(normalized, adapter, self.prompt_version)
        self._count("hit" if hit is not None else "miss")
        if hit is not None:
            text = self.prompt.search_text(query, hit.answer)
            return Rewrite(text, RewriteSource.cache, adapter, self.prompt_version, hit.answer)
        fallback = Rewrite(query, RewriteSource.fallback, None, self.prompt_version)
        if not self.up or self.misses == MissPolicy.deferred:
            return fallback
        key = cache_key(normalized, adapter, self.prompt_version)
        task = self._pending.get(key)
        if task is None:
            if len(self._pending) >= self.max_pending:
                REWRITE_BACKGROUND.labels("dropped").inc()
                return fallback
            REWRITE_BACKGROUND.labels("queued").inc()
            task = asyncio.create_task(self._generate(query, normalized, adapter))
            self._pending[key] = task
            task.add_done_callback(self._forget(key))
        if self.budget_s <= 0:
            return fallback
        try:
            result = await asyncio.wait_for(asyncio.shield(task), self.budget_s)
        except (TimeoutError, PolicyError):
            return fallback
        if not result.ok:
            # The adapter answered but with nothing usable: name it, search with the raw query.
            return Rewrite(query, RewriteSource.fallback, result.adapter, self.prompt_version)
        text = self.prompt.search_text(query, result.answer)
        return Rewrite(
            text, RewriteSource.policy, result.adapter, self.prompt_version, result.answer
        )

    async def stored(self, query: str, normalized: str, adapter: str) -> Rewrite:
        hit = await self.store.get(normalized, adapter, self.prompt_version)
        if hit is None:
            return Rewrite(query, RewriteSource.fallback, None, self.prompt_version)
        text = self.prompt.search_text(query, hit.answer)
        return Rewrite(text, RewriteSource.cache, adapter, self.prompt_version, hit.answer)

    def _forget(self, key: str):  # type: ignore[no-untyped-def]
        def done(task: asyncio.Task[RewriteResult]) -> None:
            self._pending.pop(key, None)
            if not task.cancelled():
                task.exception()  # retrieved: a background failure is logged, not re-raised

        return done

    def _count(self, outcome: str) -> None:
        self.lookups[outcome] += 1
        REWRITE_HIT_RATIO.set(self.lookups["hit"] / (self.lookups["hit"] + self.lookups["miss"]))

    async def _generate(self, query: str, normalized: str, adapter: str | None) -> RewriteResult:
        with self.watcher.using(adapter):
            try:
                result = await self.policy.rewrite(query, adapter=adapter)
            except PolicyBusy:
                raise  # overloaded, not down: the next search of the query asks again
            except PolicyError as e:
                self._mark_down(e)
                raise
        # An unusable answer is stored too (as None), so the query is not generated again.
        answer = StoredAnswer(result.answer if result.ok else None, result.raw_completion)
        await self.store.put(normalized, adapter, self.prompt_version, answer)
        return result

    def _mark_down(self, error: Exception) -> None:
        if self.up:
            log.warning("policy unavailable, serving raw queries: %s", error)
        self.up = False
        self.last_error = str(error)[:300]
        POLICY_UP.set(0)

    async def _check_health(self) -> None:
        try:
            ok = await self.policy.health()
        except Exception as e:  # noqa: BLE001 - any failure reads as down
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

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.up,
            "degraded": not self.up,
            "active_adapter": self.watcher.current,
            "error": self.last_error or self.watcher.last_error,
            "prompt_version": self.prompt_version,
            "checked_at": time.time(),
        }

    def store_status(self) -> dict[str, Any]:
        """This process's rewrite-store view: lookups, hit ratio, pending generations, and the
        latest warm-up's progress (from the adapter registry)."""
        total = self.lookups["hit"] + self.lookups["miss"]
        return {
            "active_adapter": self.watcher.current,
            "prompt_version": self.prompt_version,
            "budget_ms": self.budget_s * 1000,
            "miss_policy": self.misses,
            "hits": self.lookups["hit"],
            "misses": self.lookups["miss"],
            "hit_ratio": self.lookups["hit"] / total if total else None,
            "pending": len(self._pending),
            "local_entries": len(self.store.local),
            "warmup": self.watcher.warmup,
        }

    async def start(self) -> None:
        self.watcher.before_switch = self._preload
        self.watcher.on_warmup_done = self.store.forget_missing
        self._health.start()
        self.watcher.start()

    async def _preload(self, adapter: str | None) -> None:
        if adapter is not None or self.serve_base:
            n = await self.store.preload(adapter, self.prompt_version)
            log.info("preloaded %d stored rewrites of %s", n, adapter or "the base model")

    async def stop(self) -> None:
        await self.watcher.stop()
        await self._health.stop()
        for task in list(self._pending.values()):
            task.cancel()
        await self.store.aclose()
        await self.policy.aclose()
