"""The search use case: rewrite the query, retrieve, log the search."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from service.db.models import utcnow
from service.errors import Conflict, Unavailable
from service.normalize import normalize_query
from service.observability import SEARCH_LATENCY, SEARCHES, STAGE_LATENCY
from service.retrieval.batcher import SearchBatcher
from service.retrieval.index import ModeUnavailableError
from service.rewriting.rewrite import Rewriter
from service.schemas.public import SearchRequest, SearchResponse, SearchResult
from service.services.search_log import SearchLogWriter
from service.state import RetrieverHolder


@dataclass
class SearchService:
    log: SearchLogWriter
    retrievers: RetrieverHolder
    rewriter: Rewriter
    batcher: SearchBatcher

    async def search(self, req: SearchRequest) -> SearchResponse:
        t0 = time.perf_counter()
        retriever = self.retrievers.get()
        if retriever is None:
            raise Unavailable(self.retrievers.error or "the index is not loaded yet")
        try:
            retriever.resolve_mode(req.mode)
        except ModeUnavailableError as e:
            raise Conflict(str(e)) from e
        normalized = normalize_query(req.query)
        rewrite = await self.rewriter.rewrite(req.query, normalized)
        t1 = time.perf_counter()
        # The batch may run on a newer index than the one checked above: log the one used.
        hits, retriever, mode, arm_ms = await self.batcher.search(rewrite.text, req.k, req.mode)
        t2 = time.perf_counter()
        search_id = str(uuid.uuid4())
        latency_ms = (t2 - t0) * 1000
        row = dict(
            id=search_id,
            query=req.query,
            normalized_query=normalized,
            rewrite=rewrite.text,
            rewrite_source=rewrite.source,
            adapter=rewrite.adapter,
            prompt_version=rewrite.prompt_version,
            k=req.k,
            product_ids=[h.product_id for h in hits],
            scores=[round(h.score, 6) for h in hits],
            index_version=retriever.version,
            latency_ms=latency_ms,
            user_id=req.user_id,
            session_id=req.session_id,
            created_at=utcnow(),
        )
        self.log.submit(row)
        t3 = time.perf_counter()
        SEARCHES.labels(rewrite.source).inc()
        SEARCH_LATENCY.observe(t3 - t0)
        STAGE_LATENCY.labels("rewrite").observe(t1 - t0)
        STAGE_LATENCY.labels("retrieve").observe(t2 - t1)
        STAGE_LATENCY.labels("log").observe(t3 - t2)
        return SearchResponse(
            search_id=search_id,
            query=req.query,
            rewrite=rewrite.text,
            rewrite_source=rewrite.source,
            adapter=rewrite.adapter,
            prompt_version=rewrite.prompt_version,
            index_version=retriever.version,
            expansion=rewrite.answer,
            retrieval_mode=mode,
            results=[
                SearchResult(product_id=h.product_id, title=h.title, score=h.score) for h in hits
            ],
            timings={
                "rewrite_ms": round((t1 - t0) * 1000, 3),
                "retrieve_ms": round((t2 - t1) * 1000, 3),
                **{name: round(ms, 3) for name, ms in arm_ms.items()},
                "log_ms": round((t3 - t2) * 1000, 3),
                "total_ms": round((t3 - t0) * 1000, 3),
            },
        )
