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
from service.retrieval.facets import Filters
from service.retrieval.index import Ranking, Retriever

Answer = tuple[Ranking, Retriever, RetrievalMode, dict[str, float]]


@dataclass
class _Pending:
    text: str
    k: int
    mode: RetrievalMode | None
    lexical_text: str | None
    filters: Filters | None
    candidates: bool
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

    async def search(
        self,
        text: str,
        k: int,
        mode: RetrievalMode | None = None,
        *,
        lexical_text: str | None = None,
        filters: Filters | None = None,
        candidates: bool = False,
    ) -> Answer:
        """The top-k ranking of `text` (see `Retriever.rank` for the keyword arguments), the
        retriever (index version) and mode that produced it, and the batch's ms per arm."""
        pending = _Pending(text, k, mode, lexical_text, filters, candidates, None)  # type: ignore[arg-type]
        if self._queue is None:  # not started (no event loop task): search directly
            return (await self._search_batch(self._get_retriever(), [pending], mode))[0]
        pending.future = asyncio.get_running_loop().create_future()
        await self._queue.put(pending)
        return await pending.future

    @staticmethod
    async def _search_batch(
        retriever: Retriever, group: list[_Pending], mode: RetrievalMode | None
    ) -> list[Answer]:
        chosen = retriever.resolve_mode(mode)
        timings: dict[str, float] = {}

        def rank() -> list[Ranking]:
            return retriever.rank(
                [p.text for p in group],
                max(p.k for p in group),
                chosen,
                timings,
                lexical_texts=[p.lexical_text or p.text for p in group],
                filters=[p.filters for p in group],
                candidates=any(p.candidates for p in group),
            )

        rankings = await to_thread.run_sync(rank)
        return [
            (Ranking(r.rows[: p.k], r.scores[: p.k], r.candidates), retriever, chosen, timings)
            for p, r in zip(group, rankings, strict=True)
        ]

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
                answers = await self._search_batch(retriever, group, mode)
            except Exception as e:  # noqa: BLE001 - every waiter gets the error, loop goes on
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, answer in zip(group, answers, strict=True):
                if not p.future.done():
                    p.future.set_result(answer)
