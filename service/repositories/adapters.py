"""Queries on the adapter registry. `activate` flips the active pointer in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Adapter, utcnow
from service.domain import AdapterStatus


def get_adapter(session: Session, name: str) -> Adapter | None:
    return session.get(Adapter, name)


def list_adapters(session: Session) -> Sequence[Adapter]:
    return session.scalars(select(Adapter).order_by(Adapter.created_at.desc())).all()


def active_adapter(session: Session) -> Adapter | None:
    return session.scalars(select(Adapter).where(Adapter.status == AdapterStatus.active)).first()


def previous_adapter(session: Session) -> Adapter | None:
    """The adapter that served before the current one (retired most recently, was active)."""
    stmt = (
        select(Adapter)
        .where(Adapter.status == AdapterStatus.retired, Adapter.activated_at.is_not(None))
        .order_by(Adapter.retired_at.desc())
    )
    return session.scalars(stmt).first()


def add_adapter(session: Session, adapter: Adapter) -> None:
    session.add(adapter)


def set_active(session: Session, name: str | None) -> str | None:
    """Make `name` the only active adapter (None: serve the base model). Returns the previous."""
    # Row locks on PostgreSQL serialise concurrent promotions; SQLite locks the whole file.
    current = session.scalars(
        select(Adapter).where(Adapter.status == AdapterStatus.active).with_for_update()
    ).all()
    now = utcnow()
    previous = current[0].name if current else None
    for row in current:
        if row.name != name:
            row.status = AdapterStatus.retired
            row.retired_at = now
    if name is not None:
        session.execute(
            update(Adapter)
            .where(Adapter.name == name)
            .values(status=AdapterStatus.active, activated_at=now, retired_at=None)
        )
    return previous


def set_status(
    session: Session, name: str, status: str, metrics: dict[str, Any] | None = None
) -> None:
    row = session.get(Adapter, name)
    if row is None:
        return
    row.status = status
    if metrics:
        row.metrics = {**(row.metrics or {}), **metrics}


def set_warmup(session: Session, name: str, progress: dict[str, Any]) -> None:
    """Record the progress of the adapter's rewrite warm-up (`metrics.warmup`)."""
    row = session.get(Adapter, name)
    if row is not None:
        row.metrics = {**(row.metrics or {}), "warmup": progress}
