"""Admin endpoints (bearer `OSPO_ADMIN_API_KEY`): adapters, training, catalog, index, explain."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.adapters import swap
from service.api.deps import AdminDep, RetrieversDep, SettingsDep
from service.api.schemas import ErrorResponse
from service.catalog.records import ProductRecord
from service.errors import Conflict
from service.services import admin

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorResponse}},
)


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ospo", "grpo"] = "ospo"
    steps: int | None = Field(None, ge=1, le=100_000, description="Policy-gradient steps.")
    group_size: int | None = Field(None, ge=2, le=64, description="Rollouts per query.")
    seed: int | None = None
    warm_start_samples: int | None = Field(
        None, ge=0, le=64, description="Rejection-sampling warm start: samples per query (0: off)."
    )


class ProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    brand: str | None = None
    description: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class RebuildRequest(BaseModel):
    kind: Literal["auto", "flat", "hnsw"] = "auto"


def _policy(request: Request):  # type: ignore[no-untyped-def]
    rewriter = request.app.state.rewriter
    policy = getattr(rewriter, "policy", None)
    if policy is None:
        raise Conflict("no policy backend is configured (OSPO_POLICY_BACKEND=none)")
    return rewriter, policy


@router.get("/adapters")
async def adapters(settings: SettingsDep) -> list[dict[str, Any]]:
    return await to_thread.run_sync(admin.get_adapters, settings.resolved_database_url)


class PromotionOut(BaseModel):
    status: Literal["active", "warming"] = Field(
        description="active: flipped (200); warming: a worker warms the rewrite store and then "
        "flips (202; progress under `GET /admin/rewrites` and the adapter's `metrics.warmup`)."
    )
    active: str | None = None
    previous: str | None = None
    seconds: float | None = None
    canary: dict[str, Any] = Field(default_factory=dict)
    warmup: dict[str, Any] | None = None


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
    request: Request,
    response: Response,
    settings: SettingsDep,
    warm: Annotated[
        bool,
        Query(
            description="Rewrite the head queries with the adapter before it serves (a worker "
            "does it, then flips; 202). false: load, canary and flip now (200)."
        ),
    ] = True,
) -> PromotionOut:
    """Make the adapter the active one: load and canary it, warm the rewrite store, flip."""
    rewriter, policy = _policy(request)
    if warm and settings.policy_backend == "vllm":
        await to_thread.run_sync(admin.enqueue_promotion, settings, name)
        response.status_code = 202
        return PromotionOut(status="warming", active=None)
    result = await swap.activate(policy, settings.resolved_database_url, name)
    await rewriter.watcher.sync_once()
    return PromotionOut(status="active", **result.__dict__)


@router.post(
    "/adapters/rollback",
    response_model=PromotionOut,
    responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def rollback(request: Request, settings: SettingsDep) -> PromotionOut:
    """Serve the previous adapter again (it stays loaded and its rewrites stay stored, so this
    is instant)."""
    rewriter, policy = _policy(request)
    result = await swap.rollback(policy, settings.resolved_database_url)
    await rewriter.watcher.sync_once()
    return PromotionOut(status="active", **result.__dict__)


class RewriteStoreOut(BaseModel):
    active_adapter: str | None
    prompt_version: str
    budget_ms: float = Field(description="How long a miss waits for the policy (0: not at all).")
    miss_policy: str = Field(description="Who rewrites misses: `background` or `deferred`.")
    stored: int = Field(description="Rewrites of the active policy in the database tier.")
    hits: int = Field(description="Searches of this API process answered from the store.")
    misses: int
    hit_ratio: float | None
    pending: int = Field(description="Background generations in flight in this process.")
    local_entries: int
    warmup: dict[str, Any] | None = Field(
        description="The latest warm-up (any adapter): status, total, done, generated, times."
    )


@router.get("/rewrites", response_model=RewriteStoreOut)
async def rewrites(request: Request, settings: SettingsDep) -> RewriteStoreOut:
    """The rewrite store as this API process sees it, and the latest warm-up's progress."""
    rewriter, _ = _policy(request)
    status = rewriter.store_status()
    stored = await to_thread.run_sync(
        admin.count_stored_rewrites,
        settings.resolved_database_url,
        status["active_adapter"],
        status["prompt_version"],
    )
    return RewriteStoreOut(stored=stored, **status)


@router.post("/train", status_code=202)
async def train(settings: SettingsDep, body: TrainRequest | None = None) -> dict[str, str]:
    """Queue an update (default settings; overrides optional). One live run at a time: 409."""
    body = body or TrainRequest()
    overrides = body.model_dump(exclude_none=True, exclude={"algorithm"})
    run_id = await to_thread.run_sync(admin.enqueue_training, settings, body.algorithm, overrides)
    return {"run_id": run_id, "status": "queued"}


@router.get("/runs")
async def runs(settings: SettingsDep, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    return await to_thread.run_sync(admin.get_runs, settings.resolved_database_url, limit)


@router.get("/runs/{run_id}")
async def run(run_id: str, settings: SettingsDep) -> dict[str, Any]:
    return await to_thread.run_sync(admin.get_one_run, settings.resolved_database_url, run_id)


@router.post("/catalog")
async def catalog(body: list[ProductIn], settings: SettingsDep) -> dict[str, Any]:
    """Upsert products by id; they are searchable after the next index rebuild."""
    if not body or len(body) > 10_000:
        raise Conflict(
            "send 1 to 10000 products per request", status_code=422, code="invalid_input"
        )
    records = [
        ProductRecord(
            id=p.id,
            title=p.title,
            brand=p.brand,
            description=p.description,
            attributes=p.attributes,
            source="api",
        )
        for p in body
    ]
    n = await to_thread.run_sync(admin.upsert_catalog, settings.resolved_database_url, records)
    return {"upserted": n}


@router.post("/index/rebuild", status_code=202)
async def rebuild(
    request: Request, retrievers: RetrieversDep, body: RebuildRequest | None = None
) -> dict[str, Any]:
    """Build a new index version in the background and swap it in; serving never stops."""
    rebuilds: admin.IndexRebuilds = request.app.state.index_rebuilds
    return rebuilds.start((body or RebuildRequest()).kind)


@router.get("/index")
async def index_status(request: Request, retrievers: RetrieversDep) -> dict[str, Any]:
    current = retrievers.get()
    return {
        "serving": current.manifest.__dict__ if current else None,
        "rebuild": request.app.state.index_rebuilds.state,
    }


@router.get("/explain")
async def explain(
    settings: SettingsDep,
    query: Annotated[str, Query(min_length=1, max_length=512)],
) -> dict[str, Any]:
    """The active policy's rewrite of a labelled query, each segment's attribution, the reward."""
    return await to_thread.run_sync(admin.explain, settings, query, 120.0)
