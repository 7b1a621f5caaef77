from __future__ import annotations

from typing import Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.api.deps import RetrieversDep, SettingsDep
from service.db.engine import get_engine

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]] = Field(
        description="index (version), database, and policy (degraded: raw queries are served)."
    )


@router.get("/healthz", response_model=Alive)
async def healthz() -> Alive:
    """The process is alive."""
    return Alive()


def _db_ok(url: str) -> str | None:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        return f"{type(e).__name__}: {e}"[:300]


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(
    request: Request, settings: SettingsDep, retrievers: RetrieversDep
) -> JSONResponse:
    """Ready when the index is loaded and the database answers; the policy may be degraded."""
    retriever = retrievers.get()
    db_error = await to_thread.run_sync(_db_ok, settings.resolved_database_url)
    checks: dict[str, object] = {
        "index": {
            "ok": retriever is not None,
            "version": retriever.version if retriever else None,
            "error": retrievers.error,
        },
        "database": {"ok": db_error is None, "error": db_error},
    }
    policy_status = request.app.state.rewriter.status()
    if policy_status is not None:
        checks["policy"] = policy_status
    ready = retriever is not None and db_error is None
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
