"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.routers import events, health, search
from service.services.rewrite import IdentityRewriter, Rewriter
from service.services.search import SearchService
from service.settings import Settings, get_settings
from service.state import RetrieverHolder

log = logging.getLogger(__name__)

INDEX_POLL_S = 5.0


async def _watch_index(holder: RetrieverHolder) -> None:
    """Pick up a new CURRENT index version written by another process (rebuild, CLI)."""
    while True:
        await asyncio.sleep(INDEX_POLL_S)
        try:
            await to_thread.run_sync(holder.refresh)
        except Exception:  # noqa: BLE001 - keep serving the old index
            log.exception("index refresh failed")


def create_app(settings: Settings | None = None, rewriter: Rewriter | None = None) -> FastAPI:
    settings = settings or get_settings()
    retrievers = RetrieverHolder(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(retrievers.refresh)
        watcher = asyncio.create_task(_watch_index(retrievers))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = FastAPI(
        title="OSPO Search",
        version="0.1.0",
        description="Generative product search: an LLM policy rewrites the query, FAISS retrieves.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.retrievers = retrievers
    app.state.search_service = SearchService(
        settings.resolved_database_url, retrievers, rewriter or IdentityRewriter()
    )
    install_error_handlers(app)
    app.include_router(search.router)
    app.include_router(events.router)
    app.include_router(health.router)
    return app
