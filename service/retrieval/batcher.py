"""Micro-batching of concurrent searches: one embedder call and one FAISS call per batch
(per retrieval mode present in the batch).

Embedding one short query costs nearly as much as embedding a few dozen (the model runs the
same kernels on a bigger matrix), so under concurrent traffic the API collects the queries that
queue while a batch is computing (plus, optionally, those arriving within `window_ms`), up to
`max_batch`, and retrieves them together: a lone request does not wait, and a burst of 32
costs about one encoder call instead of 32 serial ones.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from anyio import to_thread

from service.background import BackgroundLoop
from service.domain import RetrievalMode
from service.retrieval.index import Hit, Retriever

Answer = tuple[list[Hit], Retriever, RetrievalMode, dict[str, float]]


@dataclass
class _Pending:
    text: str
    k: int
    mode: RetrievalMode | None
    future: asyncio.Future[Answer]


class SearchBatcher:
    def __init__(self, get_retriever, max_batch: int = 64, window_ms: float = 2.0) -> None:  # type: ignore[no-untyped-def]
        self._get_retriever = get_retriever
        self.max_batch = max_batch
        self.window_s = window_ms / 1000.0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop = BackgroundLoop("search batcher", self._next_batch)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def search(self, text: str, k: int, mode: RetrievalMode | None = None) -> Answer:
        """Top-k hits for `text`, the retriever (index version) and mode that produced them, and
        the batch's milliseconds per arm."""
        if self._queue is None:  # not started (no event loop task): search directly
            return (await self._search_batch(self._get_retriever(), [text], k, mode))[0]
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(text, k, mode, future))
        return await future

    @staticmethod
    async def _search_batch(
        retriever: Retriever, texts: list[str], k: int, mode: RetrievalMode | None
    ) -> list[Answer]:
        chosen = retriever.resolve_mode(mode)
        timings: dict[str, float] = {}
        hits = await to_thread.run_sync(retriever.search_many, texts, k, chosen, timings)
        return [(h, retriever, chosen, timings) for h in hits]

    async def _next_batch(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        # Whatever queued while the previous batch computed joins at once; the optional
        # window waits for more (0 by default: a lone search never waits).
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        await self._serve(batch)

    async def _serve(self, batch: list[_Pending]) -> None:
        retriever = self._get_retriever()
        by_mode: dict[RetrievalMode | None, list[_Pending]] = {}
        for p in batch:
            by_mode.setdefault(p.mode, []).append(p)
        for mode, group in by_mode.items():
            try:
                answers = await self._search_batch(
                    retriever, [p.text for p in group], max(p.k for p in group), mode
                )
            except Exception as e:  # noqa: BLE001 - every waiter gets the error, loop goes on
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, (hits, r, chosen, timings) in zip(group, answers, strict=True):
                if not p.future.done():
                    p.future.set_result((hits[: p.k], r, chosen, timings))
