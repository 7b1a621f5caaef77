"""Admin search analytics (bearer `OSPO_ADMIN_API_KEY`): `GET /admin/analytics`.

Thin: validates the query parameters, calls the analytics service in a worker thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from service.api.deps import AdminDep, SettingsDep
from service.schemas.analytics import AnalyticsOut
from service.schemas.public import ErrorResponse
from service.services import analytics


def _iso_8601(value: Any) -> Any:
    # pydantic would also read a bare number as a Unix time; the parameter is documented (and
    # published) as an ISO 8601 date-time, so nothing else is taken for one.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time, e.g. 2026-03-01T00:00:00Z") from None
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601)]

router = APIRouter(
    prefix="/admin",
    tags=["analytics"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorResponse}},
)


@router.get("/analytics", response_model=AnalyticsOut, responses={422: {"model": ErrorResponse}})
async def search_analytics(
    settings: SettingsDep,
    days: Annotated[
        int | None,
        Query(
            ge=1,
            le=analytics.MAX_DAYS,
            description="Length of the window in days (default 30): the last `days` whole "
            "UTC days up to `until`, or, with `since`, the `days` from `since` on (cut short "
            "by `until`).",
        ),
    ] = None,
    since: Annotated[
        IsoDateTime | None,
        Query(description="Start of the window, inclusive (ISO 8601; no offset: UTC)."),
    ] = None,
    until: Annotated[
        IsoDateTime | None,
        Query(
            description="End of the window, exclusive (default: the start of tomorrow, UTC). "
            "Before `since`: an empty window. A window over 366 days is cut to its last 366; "
            "the answer's `window` is what was counted."
        ),
    ] = None,
    top: Annotated[int, Query(ge=1, le=100, description="Length of the top-query lists.")] = 10,
    adapter: Annotated[
        str | None,
        Query(
            pattern=r"^(-|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$",
            description="Only the searches this adapter served; `-`: only those served with no "
            "adapter. Default: all.",
        ),
    ] = None,
) -> AnalyticsOut:
    """Click-through, no-result, mean click position, add-to-cart and purchase conversion, in
    total, per UTC day and per adapter, and the top (no-result) queries, over a window of
    logged searches; each search's events count toward it whenever they arrived."""
    return await to_thread.run_sync(
        lambda: analytics.search_analytics(
            settings.resolved_database_url,
            days=days,
            since=since,
            until=until,
            top=top,
            adapter=adapter,
        )
    )
