from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter

from service.api.deps import SearchLogDep, SettingsDep
from service.api.ratelimit import RETRY_AFTER, EventsRateLimit
from service.schemas.public import ErrorResponse, EventBatch, EventsResponse
from service.services.events import record_events

router = APIRouter(prefix="/v1", tags=["events"])


@router.post(
    "/events",
    response_model=EventsResponse,
    responses={
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "headers": RETRY_AFTER},
        503: {"model": ErrorResponse},
    },
)
async def events(
    body: EventBatch, settings: SettingsDep, search_log: SearchLogDep, _: EventsRateLimit
) -> EventsResponse:
    """Store a batch of shopper events; idempotent on `event_id` (a replay stores nothing twice).
    Each event is stored, a duplicate or refused on its own (`results`); one bad event never
    costs the others, and an event naming a search the log does not know is stored (marked).
    A 503 means nothing of the batch was stored: send it again."""
    return await to_thread.run_sync(
        record_events,
        settings.resolved_database_url,
        body,
        search_log,
    )
