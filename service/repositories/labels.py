"""Queries on relevance labels (dataset judgments and, later, labels mined from interactions)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.catalog.records import LabelRecord
from service.db.models import RelevanceLabel, utcnow
from service.normalize import normalize_query
from service.repositories.upsert import upsert


def upsert_labels(session: Session, records: Sequence[LabelRecord]) -> int:
    now = utcnow()
    rows = {}
    for r in records:
        nq = normalize_query(r.query)
        # Within one batch the last judgment of a (query, product, source) wins.
        rows[(nq, r.product_id, r.source)] = {
            "query": r.query,
            "normalized_query": nq,
            "product_id": r.product_id,
            "gain": r.gain,
            "source": r.source,
            "updated_at": now,
        }
    return upsert(
        session,
        RelevanceLabel.__table__,
        list(rows.values()),
        ["normalized_query", "product_id", "source"],
        ["gain", "query", "updated_at"],
    )


def count_labels(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(RelevanceLabel)) or 0


def targets_by_query(
    session: Session, sources: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """{normalized query: {product id: gain}}; several sources for a pair keep the max gain."""
    stmt = select(RelevanceLabel.normalized_query, RelevanceLabel.product_id, RelevanceLabel.gain)
    if sources:
        stmt = stmt.where(RelevanceLabel.source.in_(list(sources)))
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for nq, pid, gain in session.execute(stmt):
        out[nq][pid] = max(gain, out[nq].get(pid, 0.0))
    return dict(out)


def labelled_queries(session: Session) -> list[tuple[str, str]]:
    """Every labelled normalised query with one of its spellings (the training queries)."""
    stmt = (
        select(RelevanceLabel.normalized_query, func.min(RelevanceLabel.query))
        .group_by(RelevanceLabel.normalized_query)
        .order_by(RelevanceLabel.normalized_query)
    )
    return [(nq, q) for nq, q in session.execute(stmt)]
