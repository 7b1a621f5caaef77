"""Dialect-aware bulk upsert (INSERT … ON CONFLICT) for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def _insert(session: Session, table: Table):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upsert is not implemented for {dialect}")


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_cols: Sequence[str],
    update_cols: Sequence[str] | None,
) -> int:
    """Insert rows; on conflict update `update_cols` (or do nothing). Returns rows written."""
    return len(upsert_keys(session, table, rows, conflict_cols, update_cols))


def upsert_keys(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_cols: Sequence[str],
    update_cols: Sequence[str] | None,
) -> list[Any]:
    """`upsert`, returning the first conflict column of each row written."""
    if not rows:
        return []
    stmt = _insert(session, table).values(list(rows))
    if update_cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict_cols),
            set_={c: stmt.excluded[c] for c in update_cols},
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict_cols))
    # rowcount is unreliable for multi-row INSERT … ON CONFLICT across drivers; RETURNING is not.
    return list(session.scalars(stmt.returning(table.c[conflict_cols[0]])))
