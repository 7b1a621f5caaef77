"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from service.api.edge import install_edge
from service.api.errors import install_error_handlers
from service.api.ratelimit import RateLimits
from service.api.routers import (
    admin,
    analytics,
    comparisons,
    console,
    events,
    health,
    rules,
    search,
)
from service.background import BackgroundLoop
from service.policy.protocol import Policy
from service.retrieval.batcher import SearchBatcher
from service.rewriting.rewrite import IdentityRewriter, Rewriter
from service.rewriting.rewriter import PolicyRewriter
from service.services.admin import IndexRebuilds
from service.services.comparisons import ComparisonWatcher
from service.services.promotion import ServingAdapters
from service.services.rules import RuleCache
from service.services.search import Exploration, SearchService
from service.services.search_log import SearchLogWriter
from service.settings import Settings, get_settings
from service.state import RetrieverHolder
from service.workers import WorkerPresence

log = logging.getLogger(__name__)

INDEX_POLL_S = 5.0


def _make_rewriter(
    settings: Settings, policy: Policy | None, retrievers: RetrieverHolder
) -> Rewriter:
    """The policy-backed rewriter, or the identity when no policy is configured."""
    if policy is None and settings.policy_backend == "none":
        return IdentityRewriter()
    from service.adapters.swap import ActiveAdapterWatcher
    from service.policy.factory import make_policy
    from service.rewriting.grounding import serving_prompt
    from service.rewriting.store import RewriteStore

    prompt = serving_prompt(settings, retrievers.get)
    policy = policy or make_policy(settings, prompt)
    return PolicyRewriter(
        policy,
        RewriteStore(
            settings.rewrite_cache_size,
            settings.redis_url,
            settings.rewrite_cache_ttl_s,
            settings.resolved_database_url,
        ),
        ActiveAdapterWatcher(
            policy,
            settings.resolved_database_url,
            settings.adapter_poll_s,
            settings.adapter_unload_grace_s,
        ),
        prompt,
        settings.rewrite_budget_ms,
        settings.adapter_poll_s,
        serve_base=settings.serve_base_policy,
        max_pending=settings.rewrite_max_pending,
        misses=settings.rewrite_misses,
    )


def create_app(settings: Settings | None = None, policy: Policy | None = None) -> FastAPI:
    """The API. `policy` overrides the backend chosen by settings (tests, embedding)."""
    settings = settings or get_settings()
    retrievers = RetrieverHolder(settings)
    rewriter = _make_rewriter(settings, policy, retrievers)
    batcher = SearchBatcher(retrievers.get, settings.search_max_batch, settings.search_window_ms)
    search_log = SearchLogWriter(
        settings.resolved_database_url,
        settings.search_log_background,
        settings.search_log_dir if settings.search_log_journal else None,
    )
    rule_cache = RuleCache(settings.resolved_database_url)
    # Rules edited through another process arrive within `rules_refresh_s`; a failed reload
    # keeps the last rule book.
    rules_watcher = BackgroundLoop(
        "rules watcher", lambda: to_thread.run_sync(rule_cache.reload), settings.rules_refresh_s
    )
    live_comparison = ComparisonWatcher(settings.resolved_database_url)
    comparison_watcher = BackgroundLoop(
        "comparison watcher",
        lambda: to_thread.run_sync(live_comparison.reload),
        settings.adapter_poll_s,
    )
    # A new CURRENT index version written by another process (rebuild, CLI) is picked up here;
    # a failed refresh keeps serving the old index.
    index_watcher = BackgroundLoop(
        "index watcher",
        lambda: to_thread.run_sync(retrievers.refresh),
        INDEX_POLL_S,
        wait_first=True,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(retrievers.refresh)
        index_watcher.start()
        rules_watcher.start()
        comparison_watcher.start()
        batcher.start()
        search_log.start()
        await rewriter.start()
        try:
            yield
        finally:
            await rewriter.stop()
            await batcher.stop()
            await to_thread.run_sync(search_log.stop)
            await index_watcher.stop()
            await rules_watcher.stop()
            await comparison_watcher.stop()

    app = FastAPI(
        title="OSPO Search",
        version="0.1.0",
        description="Generative product search: an LLM policy rewrites the query, FAISS retrieves.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.retrievers = retrievers
    app.state.search_log = search_log
    app.state.rule_cache = rule_cache
    app.state.search_service = SearchService(
        search_log,
        retrievers,
        rewriter,
        batcher,
        rule_cache,
        Exploration(settings.explore_share, settings.explore_positions),
        live_comparison,
        entry=settings.expansion_entry,
    )
    app.state.rewriter = rewriter
    app.state.index_rebuilds = IndexRebuilds(settings, retrievers)
    app.state.serving_adapters = ServingAdapters(
        settings, rewriter if isinstance(rewriter, PolicyRewriter) else None
    )
    app.state.rate_limits = RateLimits(settings)
    app.state.workers = WorkerPresence(settings.resolved_database_url)
    install_error_handlers(app)
    install_edge(app, settings)
    app.include_router(search.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(rules.router)
    app.include_router(comparisons.router)
    app.include_router(analytics.router)
    app.include_router(console.router)
    return app
