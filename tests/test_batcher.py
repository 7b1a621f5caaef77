"""Concurrent searches are micro-batched into shared encoder calls, with unchanged results."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.retrieval.batcher import SearchBatcher
from service.retrieval.embedder import get_embedder
from service.retrieval.index import Retriever

QUERIES = ["usb c cable", "dog bed", "dining chairs", "wireless earbuds", "kids toys", "mug"]


class CountingRetriever:
    def __init__(self, inner: Retriever) -> None:
        self.inner, self.calls = inner, []

    def search_many(self, texts, k):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        return self.inner.search_many(texts, k)


def test_batched_results_equal_single_searches(small_index_root: Path) -> None:
    retriever = Retriever.load_current(small_index_root, get_embedder())
    counting = CountingRetriever(retriever)
    expected = {q: retriever.search_ids_many([q], 10)[0] for q in QUERIES}

    async def burst() -> list:
        batcher = SearchBatcher(lambda: counting, max_batch=64, window_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.search(q, 3 + i) for i, q in enumerate(QUERIES)))
        finally:
            await batcher.stop()

    results = asyncio.run(burst())
    for i, (q, (hits, used)) in enumerate(zip(QUERIES, results, strict=True)):
        assert used is counting
        assert [h.product_id for h in hits] == expected[q][: 3 + i]  # each its own k
    assert sum(counting.calls) == len(QUERIES)
    assert len(counting.calls) < len(QUERIES)  # the burst shared encoder calls


def test_errors_reach_every_waiter(small_index_root: Path) -> None:
    class Broken:
        def search_many(self, texts, k):  # type: ignore[no-untyped-def]
            raise RuntimeError("index unavailable")

    async def go() -> list:
        batcher = SearchBatcher(lambda: Broken(), window_ms=20)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.search(q, 3) for q in QUERIES[:3]), return_exceptions=True
            )
        finally:
            await batcher.stop()

    outcomes = asyncio.run(go())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
