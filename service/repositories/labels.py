"""Queries on relevance labels (dataset judgments and labels mined from interactions)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, distinct, func, select
from sqlalchemy.orm import Session

from service.db.models import RelevanceLabel, utcnow
from service.domain import GradeSet
from service.grades import merge_grades
from service.normalize import normalize_query
from service.records import LabelRecord
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
    session: Session,
    sources: Sequence[str] | None = None,
    grades: GradeSet = GradeSet.completed,
) -> dict[str, dict[str, float]]:
    """{normalized query: {product id: gain}}; sources combine by ``service.grades`` (a human
    grade wins over an assessed one; within a tier the max gain)."""
    stmt = select(
        RelevanceLabel.normalized_query,
        RelevanceLabel.product_id,
        RelevanceLabel.gain,
        RelevanceLabel.source,
    )
    if sources:
        stmt = stmt.where(RelevanceLabel.source.in_(list(sources)))
    return merge_grades(session.execute(stmt), grades)  # type: ignore[arg-type]


def labelled_queries(
    session: Session, sources: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """Every labelled normalised query with one of its spellings (the training queries).

    With ``sources``, only labels from those sources count, for the queries and the spelling.
    """
    stmt = (
        select(RelevanceLabel.normalized_query, func.min(RelevanceLabel.query))
        .group_by(RelevanceLabel.normalized_query)
        .order_by(RelevanceLabel.normalized_query)
    )
    if sources:
        stmt = stmt.where(RelevanceLabel.source.in_(list(sources)))
    return [(nq, q) for nq, q in session.execute(stmt)]


def has_label_source(session: Session, source: str) -> bool:
    stmt = select(RelevanceLabel.product_id).where(RelevanceLabel.source == source).limit(1)
    return session.scalar(stmt) is not None


def count_labelled_queries(session: Session, source: str) -> int:
    """How many distinct normalised queries have at least one label from ``source``."""
    stmt = select(func.count(distinct(RelevanceLabel.normalized_query))).where(
        RelevanceLabel.source == source
    )
    return session.scalar(stmt) or 0


# Rows per INSERT: at 6 bound parameters a row, well under SQLite's (32766 since 3.32) and
# PostgreSQL's (65535) limits.
_REPLACE_BATCH = 1000


def replace_labels(session: Session, source: str, records: Sequence[LabelRecord]) -> None:
    """Make ``records`` the only labels of ``source`` (in the caller's transaction, so readers
    see the old set or the new one, never a half-written mix)."""
    if any(r.source != source for r in records):
        raise ValueError(f"replace_labels({source!r}) got records of another source")
    session.execute(delete(RelevanceLabel).where(RelevanceLabel.source == source))
    for start in range(0, len(records), _REPLACE_BATCH):
        upsert_labels(session, records[start : start + _REPLACE_BATCH])
