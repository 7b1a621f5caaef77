"""Warm-up: the head queries (most searched, then labelled) are rewritten with the adapter and
stored before it serves; stored ones are skipped; the time limit cuts it short, keeping what was
generated; progress is recorded on the adapter's row. (The promotion path with a real vLLM and
worker is tested in test_e2e_loop.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from service.db.engine import session_scope
from service.db.models import Adapter, StoredRewrite, utcnow
from service.domain import RewriteOrigin
from service.policy.protocol import RewriteResult
from service.records import LabelRecord
from service.repositories.labels import upsert_labels
from service.repositories.rewrites import put_rewrites
from service.repositories.searches import add_searches
from service.rewriting.warmup import WarmupConfig, WarmupStatus, head_queries, warm


class SlowPolicy:
    """Answers `<query> extra` after `delay_s`; records the queries it was asked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.asked: list[tuple[str, str | None]] = []

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        self.asked.append((query, adapter))
        await asyncio.sleep(self.delay_s)
        return RewriteResult(f"{query} extra", "extra", adapter, "v1", 1.0, answer="extra")


def _seed(url: str) -> None:
    counts = {"usb hub": 5, "Desk Lamp": 3, "mug": 1}
    rows = []
    for query, n in counts.items():
        for _ in range(n):
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "query": query,
                    "normalized_query": query.lower(),
                    "rewrite": query,
                    "rewrite_source": "none",
                    "k": 10,
                    "product_ids": [],
                    "scores": [],
                    "latency_ms": 1.0,
                    "created_at": utcnow(),
                }
            )
    with session_scope(url) as s:
        add_searches(s, rows)
        upsert_labels(
            s,
            [
                LabelRecord(query="Office Chair", product_id="p1", gain=1.0, source="chorus"),
                LabelRecord(query="mug", product_id="p2", gain=1.0, source="chorus"),
            ],
        )
        s.add(Adapter(name="a1", path="/x", checksum="c", base_model="m", status="candidate"))


def test_head_queries_are_the_most_searched_then_the_labelled(db_url: str) -> None:
    _seed(db_url)
    assert head_queries(db_url, 2) == [
        ("usb hub", "usb hub"),
        ("desk lamp", "Desk Lamp"),
        ("mug", "mug"),
        ("office chair", "Office Chair"),
    ]
    assert [nq for nq, _ in head_queries(db_url, 0)] == ["mug", "office chair"]


def test_a_refresh_adds_the_queries_missed_since_the_last_warmup(db_url: str) -> None:
    _seed(db_url)
    before = utcnow()
    rows = [
        {"id": str(uuid.uuid4()), "query": q, "normalized_query": q, "rewrite": q,
         "rewrite_source": source, "k": 10, "product_ids": [], "scores": [],
         "latency_ms": 1.0, "created_at": utcnow()}
        for q, source in (("rare lamp", "fallback"), ("rare lamp", "fallback"),
                          ("odd kettle", "fallback"), ("served mug", "cache"))
    ]  # fmt: skip
    with session_scope(db_url) as s:
        add_searches(s, rows)
    got = [nq for nq, _ in head_queries(db_url, 1, missed_since=before)]
    # the 1 most searched, the labelled, then the misses since `before`, most frequent first
    assert got == ["usb hub", "mug", "office chair", "rare lamp", "odd kettle"]
    assert [nq for nq, _ in head_queries(db_url, 5, missed_since=utcnow())][-1] == "office chair"


def test_a_miss_logged_after_the_warmup_that_it_preceded_is_still_refreshed(db_url: str) -> None:
    """A search reaches the log after its answer — up to an orphan scan later when its
    process died and another replays the journal, with the search's own time — so the refresh
    reads from before the previous warm-up started, not from its start."""
    from service.services.promotion import MISS_LOOKBACK_S, missed_since

    _seed(db_url)
    started = time.time()
    answered = datetime.fromtimestamp(started - MISS_LOOKBACK_S / 2, UTC)  # before the warm-up
    with session_scope(db_url) as s:  # ... but committed only now (replayed from a journal)
        add_searches(s, [
            {"id": str(uuid.uuid4()), "query": "late lamp", "normalized_query": "late lamp",
             "rewrite": "late lamp", "rewrite_source": "fallback", "k": 10, "product_ids": [],
             "scores": [], "latency_ms": 1.0, "created_at": answered},
        ])  # fmt: skip
    since = missed_since({"started_at": started})
    assert since is not None and since < answered
    assert "late lamp" in [nq for nq, _ in head_queries(db_url, 1, missed_since=since)]
    assert missed_since({}) is None  # never warmed: the refresh is a first warm-up


def test_warm_stores_what_is_missing_and_records_progress(db_url: str) -> None:
    _seed(db_url)
    with session_scope(db_url) as s:
        put_rewrites(
            s,
            [
                {
                    "adapter": "a1",
                    "prompt_version": "v1",
                    "normalized_query": "usb hub",
                    "answer": "powered",
                    "raw_completion": "powered",
                    "origin": RewriteOrigin.miss,
                }
            ],
        )
    policy = SlowPolicy()
    progress = asyncio.run(warm(policy, db_url, "a1", "v1", WarmupConfig(queries=10)))  # type: ignore[arg-type]
    assert progress["status"] == WarmupStatus.done
    assert (progress["total"], progress["done"], progress["generated"]) == (4, 4, 3)
    assert sorted(q for q, _ in policy.asked) == ["Desk Lamp", "Office Chair", "mug"]
    assert {a for _, a in policy.asked} == {"a1"}
    with session_scope(db_url) as s:
        rows = {r.normalized_query: r for r in s.query(StoredRewrite).all()}
        adapter = s.get(Adapter, "a1")
        assert adapter is not None
        recorded = adapter.metrics["warmup"]
    assert rows["usb hub"].answer == "powered"  # stored before: untouched
    assert rows["desk lamp"].answer == "extra" and rows["desk lamp"].origin == "warmup"
    assert recorded["status"] == "done" and recorded["done"] == 4 and recorded["seconds"] >= 0


def test_the_time_limit_cuts_warmup_short_and_keeps_what_was_generated(db_url: str) -> None:
    _seed(db_url)
    policy = SlowPolicy(delay_s=0.4)
    config = WarmupConfig(queries=10, time_limit_s=0.6, concurrency=1)
    progress = asyncio.run(warm(policy, db_url, "a1", "v1", config))  # type: ignore[arg-type]
    assert progress["status"] == WarmupStatus.timed_out
    assert progress["done"] == progress["generated"] == 1 < progress["total"] == 4
    with session_scope(db_url) as s:
        assert s.query(StoredRewrite).count() == 1


class BatchingPolicy(SlowPolicy):
    """A `BatchPolicy`: many queries per request; records each request's queries."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list[str]] = []

    async def rewrite_many(
        self, queries: list[str], adapter: str | None = None
    ) -> list[RewriteResult]:
        self.requests.append(list(queries))
        return [await self.rewrite(q, adapter) for q in queries]


def test_a_batching_policy_gets_many_queries_per_request(db_url: str) -> None:
    from service.policy.protocol import BatchPolicy

    _seed(db_url)
    policy = BatchingPolicy()
    assert isinstance(policy, BatchPolicy) and not isinstance(SlowPolicy(), BatchPolicy)
    config = WarmupConfig(queries=10, concurrency=1, batch_size=3)
    progress = asyncio.run(warm(policy, db_url, "a1", "v1", config))  # type: ignore[arg-type]
    assert progress["status"] == WarmupStatus.done
    assert (progress["done"], progress["generated"]) == (4, 4)
    assert [len(r) for r in policy.requests] == [3, 1]  # 4 queries, 3 per request
    with session_scope(db_url) as s:
        stored = {r.normalized_query: r.answer for r in s.query(StoredRewrite).all()}
    assert stored == dict.fromkeys(["usb hub", "desk lamp", "mug", "office chair"], "extra")
