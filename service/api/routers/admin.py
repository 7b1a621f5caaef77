"""Admin endpoints (bearer `OSPO_ADMIN_API_KEY`): adapters, training, catalog, index, explain.

Thin: each endpoint validates, calls one service function and returns its response model.
"""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Response

from service.api.deps import (
    AdminDep,
    IndexRebuildsDep,
    ServingAdaptersDep,
    SettingsDep,
    WorkersDep,
)
from service.api.ratelimit import RETRY_AFTER
from service.schemas.admin import (
    AdapterOut,
    CatalogOut,
    ExplainOut,
    IndexOut,
    ProductBatch,
    PromotionOut,
    RebuildOut,
    RebuildRequest,
    RewriteStoreOut,
    RunOut,
    TrainQueued,
    TrainRequest,
)
from service.schemas.public import ErrorResponse
from service.services import admin

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorResponse}},
)


@router.get("/adapters", response_model=list[AdapterOut])
async def adapters(settings: SettingsDep) -> list[AdapterOut]:
    return await to_thread.run_sync(admin.get_adapters, settings.resolved_database_url)


@router.post(
    "/adapters/{name}/promote",
    response_model=PromotionOut,
    responses={
        202: {"model": PromotionOut},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def promote(
    name: str,
    response: Response,
    serving: ServingAdaptersDep,
    warm: Annotated[
        bool,
        Query(
            description="Rewrite the head queries with the adapter before it serves (a worker "
            "does it, then flips; 202). false: load, canary and flip now (200)."
        ),
    ] = True,
) -> PromotionOut:
    """Make the adapter the active one: load and canary it, warm the rewrite store, flip."""
    out = await serving.promote(name, warm)
    if out.status == "warming":
        response.status_code = 202
    return out


@router.post(
    "/adapters/rollback",
    response_model=PromotionOut,
    responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def rollback(serving: ServingAdaptersDep) -> PromotionOut:
    """Serve the previous adapter again (it stays loaded and its rewrites stay stored, so this
    is instant)."""
    return await serving.rollback()


@router.get("/rewrites", response_model=RewriteStoreOut, responses={409: {"model": ErrorResponse}})
async def rewrites(serving: ServingAdaptersDep) -> RewriteStoreOut:
    """The rewrite store as this API process sees it, and the latest warm-up's progress."""
    return await serving.rewrite_store()


@router.post(
    "/train",
    status_code=202,
    response_model=TrainQueued,
    responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def train(settings: SettingsDep, body: TrainRequest | None = None) -> TrainQueued:
    """Queue an update (default settings; overrides optional). One live run at a time: 409."""
    body = body or TrainRequest()
    overrides = body.model_dump(exclude_none=True, exclude={"algorithm"})
    run_id = await to_thread.run_sync(admin.enqueue_training, settings, body.algorithm, overrides)
    return TrainQueued(run_id=run_id)


@router.get("/runs", response_model=list[RunOut])
async def runs(settings: SettingsDep, limit: int = Query(50, ge=1, le=500)) -> list[RunOut]:
    return await to_thread.run_sync(admin.get_runs, settings.resolved_database_url, limit)


@router.get("/runs/{run_id}", response_model=RunOut, responses={404: {"model": ErrorResponse}})
async def run(run_id: str, settings: SettingsDep) -> RunOut:
    return await to_thread.run_sync(admin.get_one_run, settings.resolved_database_url, run_id)


@router.post("/catalog", response_model=CatalogOut)
async def catalog(body: ProductBatch, settings: SettingsDep) -> CatalogOut:
    """Upsert 1 to 10,000 products by id; they are searchable after the next index rebuild."""
    return await to_thread.run_sync(admin.upsert_catalog, settings.resolved_database_url, body)


@router.post(
    "/index/rebuild",
    status_code=202,
    response_model=RebuildOut,
    responses={409: {"model": ErrorResponse}},
)
async def rebuild(rebuilds: IndexRebuildsDep, body: RebuildRequest | None = None) -> RebuildOut:
    """Build a new index version in the background and swap it in; serving never stops."""
    return rebuilds.start((body or RebuildRequest()).kind)


@router.get("/index", response_model=IndexOut)
async def index_status(rebuilds: IndexRebuildsDep) -> IndexOut:
    return rebuilds.status()


@router.get(
    "/explain",
    response_model=ExplainOut,
    responses={
        404: {"model": ErrorResponse},
        503: {
            "model": ErrorResponse,
            "headers": RETRY_AFTER,
            "description": "No live worker consumes the queue (`no_worker`), or the broker is "
            "unavailable.",
        },
        504: {"model": ErrorResponse},
    },
)
async def explain(
    settings: SettingsDep,
    workers: WorkersDep,
    query: Annotated[str, Query(min_length=1, max_length=512)],
) -> ExplainOut:
    """The active policy's rewrite of a labelled query, each segment's attribution, the reward
    (computed by a worker: 503 at once when none runs, 504 when it does not answer in time)."""
    return await to_thread.run_sync(admin.explain, settings, workers, query)
