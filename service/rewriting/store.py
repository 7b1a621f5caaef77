"""The rewrite store: policy answers keyed by (normalised query, adapter, prompt version).

Three tiers, read in order; a hit in a lower tier fills the ones above it:
1. an in-process LRU: a repeat in this process costs a dict lookup;
2. Redis when `OSPO_REDIS_URL` is set: shared, with a TTL;
3. the database: shared by every API process and worker on the embedded default (SQLite) and
   in production, and durable. Warm-up (`service.rewriting.warmup`) writes here before a
   promotion flips; a miss generated in the background is written to every tier.
Redis and database errors never fail a search: the tier is skipped and the miss path answers.

A stored answer of None means the policy answered nothing usable for that query: search uses
the raw query and the policy is not asked again for it.

A query found in no tier is remembered as missing in this process (bounded, LRU), so repeats
of a miss — the common case for a new query between refreshes — cost a dict lookup instead of
a Redis and a database round trip. `put` of the key forgets it; `forget_missing` (called when
a warm-up or refresh finishes, which the adapter watcher sees) forgets them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from anyio import to_thread
from cachetools import LRUCache

from service.db.engine import session_scope
from service.domain import BASE_ADAPTER, RewriteOrigin
from service.observability import REWRITE_LOOKUPS
from service.repositories.rewrites import get_rewrite, put_rewrites, recent_rewrites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAnswer:
    answer: str | None  # the parsed answer (expand mode: the additions), composed per request
    raw_completion: str


def cache_key(normalized_query: str, adapter: str | None, prompt_version: str) -> str:
    digest = hashlib.sha256(normalized_query.encode()).hexdigest()[:32]
    return f"ospo:rw:{prompt_version}:{adapter or BASE_ADAPTER}:{digest}"


class RewriteStore:
    def __init__(
        self,
        capacity: int,
        redis_url: str | None = None,
        ttl_s: int = 86_400,
        database_url: str | None = None,
    ) -> None:
        # Both in-process tiers are touched only from the event loop's thread (no locks).
        self.capacity = capacity
        self.local: LRUCache[str, StoredAnswer] = LRUCache(max(capacity, 1))
        self.missing: LRUCache[str, None] = LRUCache(max(capacity, 1))
        self.ttl_s = ttl_s
        self.database_url = database_url
        self._redis = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=0.2, socket_connect_timeout=0.2
            )

    async def get(
        self, normalized: str, adapter: str | None, prompt_version: str
    ) -> StoredAnswer | None:
        key = cache_key(normalized, adapter, prompt_version)
        hit = self.local.get(key)  # a get refreshes the entry's recency
        if hit is not None:
            REWRITE_LOOKUPS.labels("local").inc()
            return hit
        if key in self.missing:
            REWRITE_LOOKUPS.labels("known_miss").inc()
            return None
        hit = await self._redis_get(key)
        if hit is not None:
            REWRITE_LOOKUPS.labels("redis").inc()
            self._keep(key, hit)
            return hit
        hit = await self._db_get(normalized, adapter, prompt_version)
        if hit is not None:
            REWRITE_LOOKUPS.labels("database").inc()
            self._keep(key, hit)
            await self._redis_set(key, hit)
            return hit
        REWRITE_LOOKUPS.labels("miss").inc()
        self._remember_missing(key)
        return None

    def _keep(self, key: str, value: StoredAnswer) -> None:
        if self.capacity > 0:
            self.local[key] = value

    def _remember_missing(self, key: str) -> None:
        self.missing[key] = None

    def forget_missing(self) -> None:
        self.missing.clear()

    async def put(
        self,
        normalized: str,
        adapter: str | None,
        prompt_version: str,
        value: StoredAnswer,
        origin: RewriteOrigin = RewriteOrigin.miss,
    ) -> None:
        key = cache_key(normalized, adapter, prompt_version)
        self._keep(key, value)
        self.missing.pop(key, None)
        await self._redis_set(key, value)
        if self.database_url is not None:
            row = {
                "adapter": adapter,
                "prompt_version": prompt_version,
                "normalized_query": normalized,
                "answer": value.answer,
                "raw_completion": value.raw_completion,
                "origin": origin,
            }
            try:
                await to_thread.run_sync(self._db_put, row)
            except Exception as e:  # noqa: BLE001 - the local and Redis tiers still hold it
                log.warning("rewrite store write failed: %s", e)

    async def preload(self, adapter: str | None, prompt_version: str) -> int:
        """Fill the LRU with the adapter's stored rewrites (warm-up ones first), so the first
        searches after this process switches to it are local hits. Returns how many."""
        if self.database_url is None or self.capacity <= 0:
            return 0

        def load() -> list[tuple[str, StoredAnswer]]:
            with session_scope(self.database_url) as s:  # type: ignore[arg-type]
                rows = recent_rewrites(s, adapter, prompt_version, self.capacity)
                return [
                    (r.normalized_query, StoredAnswer(r.answer, r.raw_completion)) for r in rows
                ]

        rows = await to_thread.run_sync(load)
        # Oldest first, so the warm-up rows end up most recently used.
        for normalized, value in reversed(rows):
            self._keep(cache_key(normalized, adapter, prompt_version), value)
        return len(rows)

    async def _redis_get(self, key: str) -> StoredAnswer | None:
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(key)
        except Exception as e:  # noqa: BLE001 - a cache outage must not fail search
            log.warning("redis get failed: %s", e)
            return None
        if raw is None:
            return None
        obj = json.loads(raw)
        return StoredAnswer(obj["answer"], obj.get("raw", ""))

    async def _redis_set(self, key: str, value: StoredAnswer) -> None:
        if self._redis is None:
            return
        try:
            payload = json.dumps({"answer": value.answer, "raw": value.raw_completion})
            await self._redis.set(key, payload, ex=self.ttl_s)
        except Exception as e:  # noqa: BLE001
            log.warning("redis set failed: %s", e)

    async def _db_get(
        self, normalized: str, adapter: str | None, prompt_version: str
    ) -> StoredAnswer | None:
        if self.database_url is None:
            return None

        def read() -> StoredAnswer | None:
            with session_scope(self.database_url) as s:  # type: ignore[arg-type]
                row = get_rewrite(s, adapter, prompt_version, normalized)
                return None if row is None else StoredAnswer(row.answer, row.raw_completion)

        try:
            return await to_thread.run_sync(read)
        except Exception as e:  # noqa: BLE001
            log.warning("rewrite store read failed: %s", e)
            return None

    def _db_put(self, row: dict) -> None:  # type: ignore[type-arg]
        with session_scope(self.database_url) as s:  # type: ignore[arg-type]
            put_rewrites(s, [row])

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
