"""Queries on the rewrite store: one row per (adapter, prompt version, normalised query)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.db.models import StoredRewrite
from service.domain import RewriteOrigin, model_name
from service.repositories.upsert import upsert

_IN_CHUNK = 500  # bound the size of one IN (...) list


def get_rewrite(
    session: Session, adapter: str | None, prompt_version: str, normalized_query: str
) -> StoredRewrite | None:
    return session.get(StoredRewrite, (model_name(adapter), prompt_version, normalized_query))


def put_rewrites(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Store rewrites; a key already stored keeps its row (greedy answers of one adapter and
    prompt are the same whoever generated them). Rows carry `adapter` as given (None: base)."""
    rows = [{**r, "adapter": model_name(r["adapter"])} for r in rows]
    return upsert(
        session,
        StoredRewrite.__table__,
        rows,
        ["adapter", "prompt_version", "normalized_query"],
        None,
    )


def stored_queries(
    session: Session, adapter: str | None, prompt_version: str, queries: Iterable[str]
) -> set[str]:
    """Which of `queries` (normalised) already have a stored rewrite."""
    queries = list(dict.fromkeys(queries))
    found: set[str] = set()
    for i in range(0, len(queries), _IN_CHUNK):
        stmt = select(StoredRewrite.normalized_query).where(
            StoredRewrite.adapter == model_name(adapter),
            StoredRewrite.prompt_version == prompt_version,
            StoredRewrite.normalized_query.in_(queries[i : i + _IN_CHUNK]),
        )
        found.update(session.scalars(stmt))
    return found


def recent_rewrites(
    session: Session, adapter: str | None, prompt_version: str, limit: int
) -> Sequence[StoredRewrite]:
    """Up to `limit` stored rewrites, warm-up ones (the head queries) first."""
    warm_first = case((StoredRewrite.origin == RewriteOrigin.warmup, 0), else_=1)
    stmt = (
        select(StoredRewrite)
        .where(
            StoredRewrite.adapter == model_name(adapter),
            StoredRewrite.prompt_version == prompt_version,
        )
        .order_by(warm_first, StoredRewrite.created_at.desc())
        .limit(limit)
    )
    return session.scalars(stmt).all()


def count_rewrites(session: Session, adapter: str | None, prompt_version: str) -> int:
    stmt = select(func.count()).where(
        StoredRewrite.adapter == model_name(adapter),
        StoredRewrite.prompt_version == prompt_version,
    )
    return session.scalar(stmt) or 0
