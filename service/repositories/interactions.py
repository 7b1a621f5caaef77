"""Reads of the search log for learning from interactions: what each search showed, whether it
explored (a randomised adjacent swap), and what shoppers did with it (trainer/online/propensity.py,
trainer/online/interaction_labels.py)."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Event, Search


class LoggedSearch(NamedTuple):
    id: str
    query: str
    normalized_query: str
    product_ids: list[Any]  # as shown: position i + 1 is product_ids[i]
    explore_pair: int | None  # k of the pair (k, k + 1) drawn, None when it did not explore
    explore_swapped: bool | None


class LoggedEvent(NamedTuple):
    search_id: str
    product_id: str
    type: str
    position: int | None  # 1-based rank in the search's shown results, None: not among them


def logged_searches(session: Session) -> list[LoggedSearch]:
    stmt = select(
        Search.id,
        Search.query,
        Search.normalized_query,
        Search.product_ids,
        Search.explore_pair,
        Search.explore_swapped,
    )
    return [LoggedSearch(*row) for row in session.execute(stmt)]


def logged_events(session: Session) -> list[LoggedEvent]:
    """Events whose search is logged: one naming a search we lost (`search_known` false) has
    no shown list or rank to learn from, so labels skip it until its search arrives."""
    stmt = select(Event.search_id, Event.product_id, Event.type, Event.position).where(
        Event.search_known.is_(True)
    )
    return [LoggedEvent(*row) for row in session.execute(stmt)]
