"""The rewrite store: LRU eviction, the shared Redis tier (real Redis, TTL), and the database
tier every API process and worker shares (SQLite and the real PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.db.engine import session_scope
from service.domain import RewriteOrigin
from service.repositories.rewrites import count_rewrites, stored_queries
from service.rewriting.store import RewriteStore, StoredAnswer, cache_key
from tests.conftest import REDIS_URL, redis_error


def test_keys_separate_adapters_and_prompt_versions() -> None:
    keys = {cache_key("mug", a, v) for a in (None, "x") for v in ("v1", "v2")}
    assert len(keys) == 4
    assert cache_key("mug", None, "v1") == cache_key("mug", None, "v1")


def test_local_tier_keeps_the_most_recently_used() -> None:
    """No Redis, no database: the in-process tier alone, bounded by its capacity; a search
    (get) refreshes an entry; capacity 0 keeps nothing."""

    async def go() -> None:
        store = RewriteStore(2)
        await store.put("a", None, "v1", StoredAnswer("A", ""))
        await store.put("b", None, "v1", StoredAnswer("B", ""))
        assert await store.get("a", None, "v1") == StoredAnswer("A", "")  # a: most recent
        await store.put("c", None, "v1", StoredAnswer("C", ""))
        assert await store.get("b", None, "v1") is None
        assert [await store.get(q, None, "v1") for q in "ac"] == [
            StoredAnswer("A", ""),
            StoredAnswer("C", ""),
        ]
        off = RewriteStore(0)
        await off.put("a", None, "v1", StoredAnswer("A", ""))
        assert await off.get("a", None, "v1") is None and len(off.local) == 0

    asyncio.run(go())


def test_database_tier_is_shared_by_processes(db_url: str) -> None:
    """What one API process stores, another finds (no Redis); adapters and prompt versions
    are separate keys; an unusable answer is stored as None and found as such."""

    async def go() -> None:
        writer = RewriteStore(10, database_url=db_url)
        reader = RewriteStore(10, database_url=db_url)  # another API process or a worker
        await writer.put("usb hub", "a1", "v1", StoredAnswer("powered 4 port", "raw"))
        await writer.put("mug", "a1", "v1", StoredAnswer(None, "garbage"))
        assert await reader.get("usb hub", "a1", "v1") == StoredAnswer("powered 4 port", "raw")
        assert await reader.get("usb hub", "a2", "v1") is None
        assert await reader.get("usb hub", "a1", "v2") is None
        assert await reader.get("mug", "a1", "v1") == StoredAnswer(None, "garbage")
        # a second put of a stored key keeps the first row
        await reader.put("usb hub", "a1", "v1", StoredAnswer("other", "raw2"))
        fresh = RewriteStore(10, database_url=db_url)
        assert await fresh.get("usb hub", "a1", "v1") == StoredAnswer("powered 4 port", "raw")
        await writer.put("lamp", None, "v1", StoredAnswer("desk", "desk"), RewriteOrigin.warmup)
        assert await fresh.get("lamp", None, "v1") == StoredAnswer("desk", "desk")

    asyncio.run(go())
    with session_scope(db_url) as s:
        assert count_rewrites(s, "a1", "v1") == 2
        assert stored_queries(s, "a1", "v1", ["usb hub", "mug", "lamp"]) == {"usb hub", "mug"}


def test_preload_fills_the_local_tier_warmup_first(db_url: str) -> None:
    async def go() -> None:
        writer = RewriteStore(10, database_url=db_url)
        for i in range(5):
            await writer.put(f"miss {i}", "a1", "v1", StoredAnswer("m", ""))
        for i in range(3):
            await writer.put(f"head {i}", "a1", "v1", StoredAnswer("h", ""), RewriteOrigin.warmup)
        api = RewriteStore(4, database_url=db_url)
        assert await api.preload("a1", "v1") == 4
        for i in range(3):  # every warm-up row made it into the 4 local slots
            assert api.local.get(cache_key(f"head {i}", "a1", "v1")) == StoredAnswer("h", "")
        assert await api.preload("other", "v1") == 0

    asyncio.run(go())


def test_database_outage_degrades_to_the_other_tiers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No schema at that URL: reads miss and writes are skipped, the local tier still serves."""

    async def go() -> None:
        store = RewriteStore(10, database_url=f"sqlite:///{tmp_path / 'nothing.db'}")
        await store.put("q", "a", "v", StoredAnswer("t", ""))  # must not raise
        assert await store.get("q", "a", "v") == StoredAnswer("t", "")
        assert await store.get("other", "a", "v") is None

    asyncio.run(go())


def test_redis_tier_is_shared_and_expires() -> None:
    if err := redis_error():
        pytest.skip(err)

    async def go() -> None:
        q = f"test {uuid.uuid4().hex}"
        writer = RewriteStore(10, REDIS_URL, ttl_s=1)
        reader = RewriteStore(10, REDIS_URL, ttl_s=1)  # another API process
        await writer.put(q, None, "v1", StoredAnswer("usb c cable braided", "raw"))
        assert await reader.get(q, None, "v1") == StoredAnswer("usb c cable braided", "raw")
        await asyncio.sleep(1.5)
        fresh = RewriteStore(10, REDIS_URL, ttl_s=1)
        assert await fresh.get(q, None, "v1") is None  # expired in Redis
        for c in (writer, reader, fresh):
            await c.aclose()

    asyncio.run(go())


def test_redis_outage_degrades_to_local() -> None:
    async def go() -> None:
        store = RewriteStore(10, "redis://127.0.0.1:1/0", ttl_s=10)  # nothing listens there
        await store.put("k", None, "v", StoredAnswer("t", ""))  # must not raise
        assert await store.get("k", None, "v") == StoredAnswer("t", "")  # the local tier
        assert await store.get("missing", None, "v") is None
        await store.aclose()

    asyncio.run(go())


def test_a_miss_is_remembered_until_a_warmup_finishes(db_url: str) -> None:
    """Repeats of a miss do not go back to the database; what another process stores meanwhile
    is seen after `forget_missing` (a finished warm-up or refresh) — or at once after this
    process's own `put`."""

    async def go() -> None:
        api = RewriteStore(10, database_url=db_url)
        worker = RewriteStore(10, database_url=db_url)
        assert await api.get("usb hub", "a1", "v1") is None
        await worker.put("usb hub", "a1", "v1", StoredAnswer("powered", ""), RewriteOrigin.warmup)
        assert await api.get("usb hub", "a1", "v1") is None  # a known miss: no round trip
        api.forget_missing()
        assert await api.get("usb hub", "a1", "v1") == StoredAnswer("powered", "")
        assert await api.get("mug", "a1", "v1") is None
        await api.put("mug", "a1", "v1", StoredAnswer("ceramic", ""))
        assert await api.get("mug", "a1", "v1") == StoredAnswer("ceramic", "")

    asyncio.run(go())
