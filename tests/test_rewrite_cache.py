"""The rewrite cache: LRU eviction, and the shared Redis tier (real Redis) with its TTL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.rewriting.cache import CachedRewrite, LruCache, RewriteCache, cache_key
from tests.conftest import REDIS_URL, redis_error


def test_keys_separate_adapters_and_prompt_versions() -> None:
    keys = {cache_key("mug", a, v) for a in (None, "x") for v in ("v1", "v2")}
    assert len(keys) == 4
    assert cache_key("mug", None, "v1") == cache_key("mug", None, "v1")


def test_lru_evicts_least_recently_used() -> None:
    lru = LruCache(2)
    lru.set("a", CachedRewrite("A", ""))
    lru.set("b", CachedRewrite("B", ""))
    assert lru.get("a") is not None  # a is now the most recent
    lru.set("c", CachedRewrite("C", ""))
    assert lru.get("b") is None and lru.get("a") and lru.get("c") and len(lru) == 2


def test_redis_tier_is_shared_and_expires() -> None:
    if err := redis_error():
        pytest.skip(err)

    async def go() -> None:
        key = f"test:{uuid.uuid4().hex}"
        writer = RewriteCache(10, REDIS_URL, ttl_s=1)
        reader = RewriteCache(10, REDIS_URL, ttl_s=1)  # another API process
        await writer.set(key, CachedRewrite("usb c cable braided", "raw"))
        hit = await reader.get(key)
        assert hit == CachedRewrite("usb c cable braided", "raw")
        await asyncio.sleep(1.5)
        fresh = RewriteCache(10, REDIS_URL, ttl_s=1)
        assert await fresh.get(key) is None  # expired in Redis
        for c in (writer, reader, fresh):
            await c.aclose()

    asyncio.run(go())


def test_redis_outage_degrades_to_local() -> None:
    async def go() -> None:
        cache = RewriteCache(10, "redis://127.0.0.1:1/0", ttl_s=10)  # nothing listens there
        await cache.set("k", CachedRewrite("t", ""))  # must not raise
        assert await cache.get("k") == CachedRewrite("t", "")  # served by the local tier
        assert await cache.get("missing") is None
        await cache.aclose()

    asyncio.run(go())
