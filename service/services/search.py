"""The search use case: apply the rules, rewrite the query, retrieve, place pins, explore, count
facets, log the search.

Order of a search and why:
1. Rules first (service/services/rules.py): hides become part of the filters, synonyms extend
   the lexical arm's text, pins are fetched extra so k organic results remain after them.
2. Filters are checked against the serving version's fields before the policy is asked, so a
   misspelt field costs a 422, not a rewrite.
3. Retrieval runs the rewrite (the rewrite and the training reward ignore filters: the policy
   learns what a query means, the filters only narrow what may be shown). Its additions enter
   as `entry` says (``ExpansionEntry``, the same setting the training reward uses): fused, the
   raw query and the expanded one are ranked in one batch and fused by reciprocal rank.
4. While an interleaved comparison runs (service/services/comparisons.py), a share of the
   searches without pins also ranks the candidate adapter's stored rewrite and shows the
   team-draft interleaving of the two rankings (service/interleaving.py), logged with its teams.
5. Pins go first; then, in a share of the other searches without pins, one adjacent pair of
   the top ranks is randomised (half shown swapped) for the propensity estimator
   (trainer/online/propensity.py). `product_ids` is logged as shown.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from service.db.models import utcnow
from service.domain import ExpansionEntry
from service.errors import Conflict, Unavailable
from service.interleaving import team_draft
from service.normalize import normalize_query
from service.observability import SEARCH_LATENCY, SEARCHES, STAGE_LATENCY
from service.retrieval.batcher import SearchBatcher
from service.retrieval.facets import PRICE, Filters
from service.retrieval.fusion import fuse_expansion
from service.retrieval.index import ModeUnavailableError, Ranking, Retriever
from service.rewriting.rewrite import Rewrite, Rewriter
from service.schemas.public import (
    FacetCount,
    FiredRule,
    NumericStats,
    SearchFilters,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from service.services.comparisons import ComparisonWatcher
from service.services.rules import Applied, RuleCache
from service.services.search_log import SearchLogWriter
from service.state import RetrieverHolder


@dataclass(frozen=True)
class Exploration:
    share: float = 0.0
    positions: int = 5


def to_filters(given: SearchFilters | None, hide: frozenset[str]) -> Filters:
    if given is None:
        return Filters(exclude=hide)
    return Filters(
        brand=tuple(given.brand or ()),
        price_min=given.price.min if given.price else None,
        price_max=given.price.max if given.price else None,
        attributes=tuple((name, tuple(v)) for name, v in (given.attributes or {}).items()),
        exclude=hide,
    )


def facet_fields(retriever: Retriever, req: SearchRequest) -> tuple[list[str], list[str]]:
    """(fields to count: the request's or the version's defaults, warnings about fields the
    version lacks)."""
    table = retriever.facets
    wanted_filters = list((req.filters.attributes or {}) if req.filters else {})
    restricting = req.filters is not None and (
        req.filters.brand or req.filters.price or wanted_filters
    )
    if table is None:
        if req.facets or restricting:
            raise Conflict(
                f"index {retriever.version} has no filter columns; rebuild it with "
                "`ospo index build`"
            )
        return [], []
    warnings = []
    if unknown := table.unknown([*wanted_filters, *(req.facets or [])]):
        warnings.append(
            f"unknown field(s) {unknown} (a filter on one admits nothing); this catalogue "
            f"has: {', '.join(table.fields)}"
        )
    fields = table.default_facets() if req.facets is None else list(dict.fromkeys(req.facets))
    return fields, warnings


def place_pins(
    retriever: Retriever, rows: list[int], pins: tuple[str, ...], filters: Filters, k: int
) -> tuple[list[int], int]:
    """(rows with the admitted pins first, how many pins were placed), cut to k."""
    if not pins:
        return rows[:k], 0
    mask = retriever.mask(filters)
    pinned = [
        r
        for pid in pins
        if (r := retriever.row_of.get(pid)) is not None and (mask is None or mask[r])
    ][:k]
    organic = [r for r in rows if r not in set(pinned)]
    return (pinned + organic)[:k], len(pinned)


@dataclass
class SearchService:
    log: SearchLogWriter
    retrievers: RetrieverHolder
    rewriter: Rewriter
    batcher: SearchBatcher
    rules: RuleCache
    exploration: Exploration = Exploration()
    comparisons: ComparisonWatcher | None = None
    rng: random.Random = field(default_factory=random.Random)
    entry: ExpansionEntry = ExpansionEntry.concat

    def _explore(self, n_shown: int, pinned: int) -> tuple[int | None, bool | None]:
        """(k, swapped) of the pair drawn, or (None, None) when this search does not explore."""
        top = min(self.exploration.positions, n_shown)
        if pinned or top < 2 or self.rng.random() >= self.exploration.share:
            return None, None
        return self.rng.randint(1, top - 1), self.rng.random() < 0.5

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
        applied: Applied = self.rules.book.apply(normalized)
        filters = to_filters(req.filters, applied.hide)
        facets, warnings = facet_fields(retriever, req)
        rewrite = await self.rewriter.rewrite(req.query, normalized)
        t1 = time.perf_counter()
        live = self.comparisons.current if self.comparisons is not None else None
        if live is None or applied.pin or self.rng.random() >= live.share:
            live = None
        candidate = (
            await self.rewriter.stored(req.query, normalized, live.candidate) if live else None
        )

        def retrieve(text: str, extra: tuple[str, ...]):  # type: ignore[no-untyped-def]
            return self.batcher.search(
                text,
                req.k + len(applied.pin),
                req.mode,
                lexical_text=" ".join((text, *extra)) if extra else None,
                filters=filters,
                candidates=bool(facets),
            )

        async def retrieve_rewrite(rw: Rewrite):  # type: ignore[no-untyped-def]
            additions = rw.answer if rw.answer and rw.text != req.query else None
            if additions is None or self.entry == ExpansionEntry.concat:
                return await retrieve(rw.text, applied.lexical_additions)
            if self.entry == ExpansionEntry.lexical:
                return await retrieve(req.query, (additions, *applied.lexical_additions))
            raw, expanded = await asyncio.gather(
                retrieve(req.query, applied.lexical_additions),
                retrieve(rw.text, applied.lexical_additions),
            )
            if raw[1] is not expanded[1]:  # an index swap between the two: the raw query's
                return raw
            k = req.k + len(applied.pin)
            rows, scores = fuse_expansion(
                (raw[0].rows, raw[0].scores), (expanded[0].rows, expanded[0].scores),
                raw[1].fusion, k,
            )  # fmt: skip
            pool = [r.candidates for r, *_ in (raw, expanded) if r.candidates is not None]
            ranking = Ranking(rows, scores, np.union1d(*pool) if len(pool) == 2 else None)
            return ranking, raw[1], raw[2], raw[3]

        # The batch may run on a newer index than the one checked above: log the one used.
        try:
            answers = await asyncio.gather(
                retrieve_rewrite(rewrite),
                *([retrieve_rewrite(candidate)] if candidate else []),
            )
        except ModeUnavailableError as e:
            raise Conflict(str(e)) from e
        ranking, retriever, mode, arm_ms = answers[0]
        t2 = time.perf_counter()
        score_of = dict(zip(ranking.rows.tolist(), ranking.scores.tolist(), strict=True))
        teams: list[str] | None = None
        pair = swapped = None
        if len(answers) == 2 and answers[1][1] is retriever:  # both on one index version
            rival = answers[1][0]
            score_of = {
                **dict(zip(rival.rows.tolist(), rival.scores.tolist(), strict=True)),
                **score_of,
            }
            rows, teams = team_draft(rival.rows.tolist(), ranking.rows.tolist(), req.k, self.rng)
            pinned = 0
        else:
            live = None
            rows, pinned = place_pins(retriever, ranking.rows.tolist(), applied.pin, filters, req.k)
            pair, swapped = self._explore(len(rows), pinned)
            if swapped:
                rows[pair - 1], rows[pair] = rows[pair], rows[pair - 1]
        top_score = float(ranking.scores[0]) if ranking.scores.size else 0.0
        table = retriever.facets
        results = [
            SearchResult(
                product_id=retriever.ids[r],
                title=retriever.titles[r],
                score=top_score if i < pinned else score_of[r],
                brand=table.brand_of(r) if table else None,
                price=table.price_of(r) if table else None,
                pinned=i < pinned,
            )
            for i, r in enumerate(rows)
        ]
        facet_counts: dict[str, list[FacetCount]] = {}
        facet_stats: dict[str, NumericStats] = {}
        if facets and table is not None and ranking.candidates is not None:
            candidates = np.asarray(ranking.candidates, dtype=np.int64)
            for name, pairs in table.counts(candidates, facets).items():
                facet_counts[name] = [FacetCount(value=v, count=c) for v, c in pairs]
            if PRICE in facets and (stats := table.price_stats(candidates)) is not None:
                facet_stats[PRICE] = NumericStats(min=stats[0], max=stats[1], count=stats[2])
        search_id = str(uuid.uuid4())
        fired = [FiredRule(id=i, kind=kind) for i, kind in applied.fired]
        row = dict(
            id=search_id,
            query=req.query,
            normalized_query=normalized,
            rewrite=rewrite.text,
            rewrite_source=rewrite.source,
            adapter=rewrite.adapter,
            prompt_version=rewrite.prompt_version,
            k=req.k,
            product_ids=[r.product_id for r in results],
            scores=[round(r.score, 6) for r in results],
            index_version=retriever.version,
            latency_ms=(t2 - t0) * 1000,
            user_id=req.user_id,
            session_id=req.session_id,
            created_at=utcnow(),
            filters=req.filters.model_dump(exclude_none=True) if req.filters else None,
            rules=[r.id for r in fired] or None,
            explore_pair=pair,
            explore_swapped=swapped,
            comparison_id=live.id if live else None,
            teams=teams,
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
            results=results,
            facets=facet_counts,
            facet_stats=facet_stats,
            rules=fired,
            warnings=warnings,
            timings={
                "rewrite_ms": round((t1 - t0) * 1000, 3),
                "retrieve_ms": round((t2 - t1) * 1000, 3),
                **{name: round(ms, 3) for name, ms in arm_ms.items()},
                "log_ms": round((t3 - t2) * 1000, 3),
                "total_ms": round((t3 - t0) * 1000, 3),
            },
        )
