"""Queries on the search log and its events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db.models import Event, Search, utcnow
from service.repositories.upsert import upsert, upsert_keys

ADOPT_CHUNK = 500  # search ids per IN list (SQLite binds at most 32,766 parameters)
INSERT_CHUNK = 500  # search rows per INSERT (~22 parameters each; PostgreSQL binds ≤ 65,535)


def add_searches(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert searches (one executemany); a row already stored (same id) is skipped, so a
    retried batch that had in fact committed stores nothing twice. Events that arrived before
    their search (stored with `search_known` false) are adopted in the same transaction."""
    for start in range(0, len(rows), INSERT_CHUNK):  # a backlog after an outage, a replay
        upsert(session, Search.__table__, rows[start : start + INSERT_CHUNK], ["id"], None)
    adopt_events(session, {r["id"]: list(r.get("product_ids") or []) for r in rows})


def adopt_events(session: Session, shown: dict[str, list[str]]) -> int:
    """Mark the events naming these searches known and give them the rank their product was
    shown at (`shown`: search id → product ids in order). One indexed lookup per chunk; there
    is usually nothing to adopt. Returns how many events were adopted."""
    ids = list(shown)
    adopted = 0
    for start in range(0, len(ids), ADOPT_CHUNK):
        waiting = session.execute(
            select(Event.id, Event.search_id, Event.product_id).where(
                Event.search_id.in_(ids[start : start + ADOPT_CHUNK]),
                Event.search_known.is_(False),
            )
        ).all()
        for event_id, search_id, product_id in waiting:
            pids = shown[search_id]
            position = pids.index(product_id) + 1 if product_id in pids else None
            session.execute(
                update(Event)
                .where(Event.id == event_id)
                .values(search_known=True, position=position)
            )
        adopted += len(waiting)
    return adopted


def existing_search_ids(session: Session, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    return set(session.scalars(select(Search.id).where(Search.id.in_(list(set(ids))))))


def shown_lists(session: Session, ids: Sequence[str]) -> dict[str, list[str]]:
    """Search id → the product ids it showed, in order."""
    if not ids:
        return {}
    stmt = select(Search.id, Search.product_ids).where(Search.id.in_(list(set(ids))))
    return {sid: list(pids or []) for sid, pids in session.execute(stmt)}


def insert_events(session: Session, events: Sequence[dict[str, Any]]) -> int:
    """Insert events, skipping any whose `event_id` is already stored. Returns how many were new."""
    return len(store_events(session, events))


def store_events(session: Session, events: Sequence[dict[str, Any]]) -> set[str]:
    """Insert events, skipping any whose `event_id` is already stored (by an earlier batch or
    a concurrent one). Returns the event ids this call stored."""
    now = utcnow()
    rows = [{**e, "received_at": now} for e in events]
    return set(upsert_keys(session, Event.__table__, rows, ["event_id"], None))


def shown_products(session: Session) -> list[tuple[str, str, str, list[str]]]:
    """(search id, query, normalised query, product ids shown) for every logged search."""
    stmt = select(Search.id, Search.query, Search.normalized_query, Search.product_ids)
    return [(sid, q, nq, pids) for sid, q, nq, pids in session.execute(stmt)]


def product_events(session: Session) -> list[tuple[str, str, str]]:
    """(search id, product id, event type) for every logged event."""
    stmt = select(Event.search_id, Event.product_id, Event.type)
    return [(sid, pid, etype) for sid, pid, etype in session.execute(stmt)]


def count_events(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Event)) or 0


def searches_since(session: Session, since: datetime | None) -> Sequence[Search]:
    stmt = select(Search).order_by(Search.created_at)
    if since is not None:
        stmt = stmt.where(Search.created_at > since)
    return session.scalars(stmt).all()


def top_queries(session: Session, n: int) -> list[tuple[str, str]]:
    """The `n` most searched normalised queries, each with one of its spellings, most first."""
    count = func.count().label("n")
    stmt = (
        select(Search.normalized_query, func.min(Search.query), count)
        .group_by(Search.normalized_query)
        .order_by(count.desc(), Search.normalized_query)
        .limit(n)
    )
    return [(nq, q) for nq, q, _ in session.execute(stmt)]


def missed_queries(session: Session, since: datetime, n: int) -> list[tuple[str, str]]:
    """Normalised queries served without a rewrite (`fallback`) since `since`, most first."""
    count = func.count().label("n")
    stmt = (
        select(Search.normalized_query, func.min(Search.query), count)
        .where(Search.rewrite_source == "fallback", Search.created_at > since)
        .group_by(Search.normalized_query)
        .order_by(count.desc(), Search.normalized_query)
        .limit(n)
    )
    return [(nq, q) for nq, q, _ in session.execute(stmt)]
