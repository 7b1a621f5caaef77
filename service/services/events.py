"""The event-logging use case: validate a batch as a whole, then store it idempotently."""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.db.engine import session_scope
from service.db.models import utcnow
from service.errors import NotFound
from service.observability import EVENTS
from service.repositories.searches import existing_search_ids, insert_events, shown_lists
from service.schemas.public import EventIn, EventsResponse
from service.services.search_log import UNKNOWN_SEARCH_GRACE_S, SearchLogWriter


def _unknown_searches(
    database_url: str, ids: set[str], search_log: SearchLogWriter | None
) -> list[str]:
    """The ids no stored search has, after this process's log buffer wrote them and, when
    searches are logged in the background, a short grace for other processes' buffers."""
    if search_log is not None:
        search_log.wait_written(ids)
    deadline = time.monotonic() + (
        UNKNOWN_SEARCH_GRACE_S if search_log is not None and search_log.background else 0.0
    )
    while True:
        with session_scope(database_url) as session:
            unknown = ids - existing_search_ids(session, list(ids))
        if not unknown or time.monotonic() >= deadline:
            return sorted(unknown)
        time.sleep(0.05)


def record_events(
    database_url: str,
    events: Sequence[EventIn],
    search_log: SearchLogWriter | None = None,
) -> EventsResponse:
    """Store the batch (1 to `MAX_EVENTS_PER_BATCH` events, checked by its schema) or none of it:
    acknowledged means stored."""
    unique = {e.event_id: e for e in events}  # a batch repeating an event_id stores it once
    named = {e.search_id for e in unique.values()}
    unknown = _unknown_searches(database_url, named, search_log)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise NotFound(
            f"unknown search_id(s): {shown}; the batch was not stored", code="unknown_search"
        )
    now = utcnow()
    with session_scope(database_url) as session:
        # The rank each event's product was shown at (None: not among the results), stored
        # with the event so analytics and the propensity estimator need no JSON unnesting.
        rank = {
            (sid, pid): i + 1
            for sid, pids in shown_lists(session, list(named)).items()
            for i, pid in reversed(list(enumerate(pids)))
        }
        stored = insert_events(
            session,
            [
                {
                    "event_id": e.event_id,
                    "search_id": e.search_id,
                    "product_id": e.product_id,
                    "type": e.type,
                    "ts": e.ts or now,
                    "position": rank.get((e.search_id, e.product_id)),
                }
                for e in unique.values()
            ],
        )
    EVENTS.labels("stored").inc(stored)
    EVENTS.labels("duplicate").inc(len(events) - stored)
    return EventsResponse(received=len(events), stored=stored, duplicates=len(events) - stored)
