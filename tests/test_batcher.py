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

    def resolve_mode(self, mode):  # type: ignore[no-untyped-def]
        return self.inner.resolve_mode(mode)

    def rank(self, texts, k, mode=None, timings=None, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append((len(texts), mode))
        return self.inner.rank(texts, k, mode, timings, **kwargs)


def ids(retriever: Retriever, ranking) -> list[str]:  # type: ignore[no-untyped-def]
    return [retriever.ids[r] for r in ranking.rows]


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
    for i, (q, (ranking, used, mode, timings)) in enumerate(zip(QUERIES, results, strict=True)):
        assert used is counting
        assert mode == "hybrid" and set(timings) == {"dense_ms", "lexical_ms", "fusion_ms"}
        assert ids(retriever, ranking) == expected[q][: 3 + i]  # each its own k
    assert sum(n for n, _ in counting.calls) == len(QUERIES)
    assert len(counting.calls) < len(QUERIES)  # the burst shared encoder calls


def test_modes_in_one_burst_are_searched_separately(small_index_root: Path) -> None:
    retriever = Retriever.load_current(small_index_root, get_embedder())
    counting = CountingRetriever(retriever)
    modes = ["dense", "lexical", "hybrid"] * 2

    async def burst() -> list:
        batcher = SearchBatcher(lambda: counting, max_batch=64, window_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.search(q, 5, m) for q, m in zip(QUERIES, modes, strict=True))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(burst())
    for q, m, (ranking, _, mode, _) in zip(QUERIES, modes, results, strict=True):
        assert mode == m
        assert ids(retriever, ranking) == retriever.search_ids_many([q], 5, m)[0]
    assert sorted(m for _, m in counting.calls) == ["dense", "hybrid", "lexical"]


def test_errors_reach_every_waiter(small_index_root: Path) -> None:
    class Broken:
        def resolve_mode(self, mode):  # type: ignore[no-untyped-def]
            return mode

        def rank(self, texts, k, mode=None, timings=None, **kwargs):  # type: ignore[no-untyped-def]
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
