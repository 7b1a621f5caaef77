"""Rewrite cache keyed by (normalised query, adapter, prompt version).

An in-process LRU always; Redis in front of it when `OSPO_REDIS_URL` is set, so every API
process shares what any of them generated. Redis errors never fail a search: the cache is
skipped and the policy (or the fallback) answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedRewrite:
    text: str  # the policy's parsed answer (additions in expand mode), composed per request
    raw_completion: str


def cache_key(normalized_query: str, adapter: str | None, prompt_version: str) -> str:
    digest = hashlib.sha256(normalized_query.encode()).hexdigest()[:32]
    return f"ospo:rw:{prompt_version}:{adapter or 'base'}:{digest}"


class LruCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, CachedRewrite] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedRewrite | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def set(self, key: str, value: CachedRewrite) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class RewriteCache:
    """Two tiers: the local LRU, then Redis (async client) when configured."""

    def __init__(self, capacity: int, redis_url: str | None = None, ttl_s: int = 86_400) -> None:
        self.local = LruCache(capacity)
        self.ttl_s = ttl_s
        self._redis = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=0.2, socket_connect_timeout=0.2
            )

    async def get(self, key: str) -> CachedRewrite | None:
        hit = self.local.get(key)
        if hit is not None or self._redis is None:
            return hit
        try:
            raw = await self._redis.get(key)
        except Exception as e:  # noqa: BLE001 - a cache outage must not fail search
            log.warning("redis cache get failed: %s", e)
            return None
        if raw is None:
            return None
        obj = json.loads(raw)
        value = CachedRewrite(obj["text"], obj.get("raw", ""))
        self.local.set(key, value)
        return value

    async def set(self, key: str, value: CachedRewrite) -> None:
        self.local.set(key, value)
        if self._redis is None:
            return
        try:
            payload = json.dumps({"text": value.text, "raw": value.raw_completion})
            await self._redis.set(key, payload, ex=self.ttl_s)
        except Exception as e:  # noqa: BLE001
            log.warning("redis cache set failed: %s", e)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
