"""The event-logging use case: each event of a batch is stored, found a duplicate or refused on
its own, and the answer says which (`EventsResponse.results`).

Nothing a shopper sends is refused for a loss on our side: an event naming a search the log
does not know (never logged, or lost before the durable search log) is stored with
`search_known` false; interaction labels skip it until the search arrives
(`repositories.searches.adopt_events`). Refused are only events that are not events (invalid
fields: the reason names them) or that the database refuses for their content. A database
outage fails the whole request (503, nothing stored), so acknowledged still means stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError

from service.db.engine import session_scope
from service.db.models import utcnow
from service.observability import EVENTS
from service.repositories.searches import existing_search_ids, shown_lists, store_events
from service.schemas.public import EventIn, EventResult, EventsResponse
from service.services.search_log import UNKNOWN_SEARCH_GRACE_S, SearchLogWriter

log = logging.getLogger(__name__)

OUTAGE = (OperationalError, InterfaceError)


def _unknown_searches(
    database_url: str, ids: set[str], search_log: SearchLogWriter | None
) -> set[str]:
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
            return unknown
        time.sleep(0.05)


def _reason(error: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(x) for x in e.get('loc', ())) or 'event'}: {e.get('msg', 'invalid')}"
        for e in error.errors()
    ]
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def _claimed_id(item: Any) -> str | None:
    """The event_id an invalid item carries, echoed back when it is a string."""
    value = item.get("event_id") if isinstance(item, dict) else None
    return value[:128] if isinstance(value, str) else None


def _store(database_url: str, rows: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    """(event ids stored now, event id → why the database refused it). The batch goes in one
    statement; should the database refuse it for its content, each row is tried alone so one
    row never costs the others. An outage propagates: nothing is acknowledged."""
    try:
        with session_scope(database_url) as session:
            return store_events(session, rows), {}
    except OUTAGE:
        raise
    except Exception:  # noqa: BLE001, S110 - a refusal of the data: find the rows causing it
        pass
    stored: set[str] = set()
    refused: dict[str, str] = {}
    for row in rows:
        try:
            with session_scope(database_url) as session:
                stored |= store_events(session, [row])
        except OUTAGE:
            raise
        except Exception as e:  # noqa: BLE001
            log.warning("event %s refused by the database: %s", row["event_id"], e)
            refused[row["event_id"]] = f"the database refused it: {str(e).splitlines()[0][:200]}"
    return stored, refused


def record_events(
    database_url: str,
    items: Sequence[EventIn | dict[str, Any]],
    search_log: SearchLogWriter | None = None,
) -> EventsResponse:
    """Store each event of the batch that is one; idempotent on `event_id`."""
    results: list[EventResult | None] = [None] * len(items)
    first: dict[str, tuple[int, EventIn]] = {}  # event_id → its first valid occurrence
    for i, item in enumerate(items):
        try:
            event = item if isinstance(item, EventIn) else EventIn.model_validate(item)
        except ValidationError as e:
            results[i] = EventResult(
                index=i, event_id=_claimed_id(item), status="refused", reason=_reason(e)
            )
            continue
        if event.event_id in first:  # a batch repeating an event_id stores it once
            results[i] = EventResult(index=i, event_id=event.event_id, status="duplicate")
        else:
            first[event.event_id] = (i, event)
    stored: set[str] = set()
    refused: dict[str, str] = {}
    unknown: set[str] = set()
    if first:
        named = {e.search_id for _, e in first.values()}
        unknown = _unknown_searches(database_url, named, search_log)
        with session_scope(database_url) as session:
            # The rank each event's product was shown at (None: not among the results), stored
            # with the event so analytics and the propensity estimator need no JSON unnesting.
            rank = {
                (sid, pid): i + 1
                for sid, pids in shown_lists(session, list(named - unknown)).items()
                for i, pid in reversed(list(enumerate(pids)))
            }
        now = utcnow()
        stored, refused = _store(
            database_url,
            [
                {
                    "event_id": e.event_id,
                    "search_id": e.search_id,
                    "product_id": e.product_id,
                    "type": e.type,
                    "ts": e.ts or now,
                    "position": rank.get((e.search_id, e.product_id)),
                    "search_known": e.search_id not in unknown,
                }
                for _, e in first.values()
            ],
        )
    for event_id, (i, event) in first.items():
        if event_id in refused:
            results[i] = EventResult(
                index=i, event_id=event_id, status="refused", reason=refused[event_id]
            )
        elif event_id in stored:
            known = event.search_id not in unknown
            results[i] = EventResult(
                index=i, event_id=event_id, status="stored", search_known=known
            )
        else:
            results[i] = EventResult(index=i, event_id=event_id, status="duplicate")
    final = [r for r in results if r is not None]
    counts = {s: sum(r.status == s for r in final) for s in ("stored", "duplicate", "refused")}
    unmatched = sum(r.status == "stored" and r.search_known is False for r in final)
    for status, n in counts.items():
        EVENTS.labels(status).inc(n)
    if unmatched:
        log.warning("stored %d events naming searches the log does not know", unmatched)
    return EventsResponse(
        received=len(items),
        stored=counts["stored"],
        duplicates=counts["duplicate"],
        refused=counts["refused"],
        unknown_search=unmatched,
        results=final,
    )
