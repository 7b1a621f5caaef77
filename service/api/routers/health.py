from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.deps import RetrieversDep, SettingsDep
from service.db.engine import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


def _db_ok(url: str) -> str | None:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        return f"{type(e).__name__}: {e}"[:300]


@router.get("/readyz")
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
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
