"""Queries on interleaved comparisons and the searches they showed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Comparison, Event, Search, utcnow
from service.domain import ComparisonStatus, EventType


def running_comparison(session: Session) -> Comparison | None:
    stmt = select(Comparison).where(Comparison.status == ComparisonStatus.running)
    return session.scalars(stmt.order_by(Comparison.created_at)).first()


def get_comparison(session: Session, comparison_id: str) -> Comparison | None:
    return session.get(Comparison, comparison_id)


def list_comparisons(session: Session, limit: int = 50) -> Sequence[Comparison]:
    stmt = select(Comparison).order_by(Comparison.created_at.desc()).limit(limit)
    return session.scalars(stmt).all()


def add_comparison(session: Session, values: dict[str, Any]) -> Comparison:
    row = Comparison(**values, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def finish_comparison(
    session: Session, comparison_id: str, status: ComparisonStatus, result: dict[str, Any]
) -> None:
    row = session.get(Comparison, comparison_id)
    if row is not None:
        row.status = status
        row.result = result
        row.decided_at = utcnow()


def interleaved_searches(
    session: Session, comparison_id: str
) -> list[tuple[str, list[str], list[int]]]:
    """(search id, teams, engaged positions) of every search the comparison interleaved; an
    engagement is any event but an impression on a shown product."""
    searches = session.execute(
        select(Search.id, Search.teams).where(Search.comparison_id == comparison_id)
    ).all()
    engaged: dict[str, list[int]] = defaultdict(list)
    stmt = (
        select(Event.search_id, Event.position)
        .join(Search, Search.id == Event.search_id)
        .where(
            Search.comparison_id == comparison_id,
            Event.type != EventType.impression,
            Event.position.is_not(None),
        )
    )
    for sid, position in session.execute(stmt):
        engaged[sid].append(position)
    return [(sid, list(teams or []), engaged.get(sid, [])) for sid, teams in searches]
