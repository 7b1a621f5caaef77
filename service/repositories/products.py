"""Queries on the products table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Product, utcnow
from service.records import ProductRecord
from service.repositories.upsert import upsert

_UPDATABLE = ("title", "brand", "description", "attributes", "search_text", "source", "updated_at")


def upsert_products(session: Session, records: Sequence[ProductRecord]) -> int:
    now = utcnow()
    rows = {
        r.id: {
            "id": r.id,
            "title": r.title,
            "brand": r.brand,
            "description": r.description,
            "attributes": r.attributes,
            "search_text": r.search_text,
            "source": r.source,
            "created_at": now,
            "updated_at": now,
        }
        for r in records
    }
    return upsert(session, Product.__table__, list(rows.values()), ["id"], _UPDATABLE)


def count_products(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Product)) or 0


def iter_search_texts(session: Session, batch: int = 5000) -> Iterator[tuple[str, str, str]]:
    """(id, title, search_text) for every product, in id order (the index's row order)."""
    stmt = select(Product.id, Product.title, Product.search_text).order_by(Product.id)
    for row in session.execute(stmt.execution_options(yield_per=batch)):
        yield row.id, row.title, row.search_text


def iter_index_rows(
    session: Session, batch: int = 5000
) -> Iterator[tuple[str, str, str, str | None, dict]]:
    """(id, title, search_text, brand, attributes) for every product, in id order (the index's
    row order): what an index version holds, facets included."""
    stmt = select(
        Product.id, Product.title, Product.search_text, Product.brand, Product.attributes
    ).order_by(Product.id)
    for row in session.execute(stmt.execution_options(yield_per=batch)):
        yield row.id, row.title, row.search_text, row.brand, row.attributes or {}


def existing_ids(session: Session, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    return set(session.scalars(select(Product.id).where(Product.id.in_(list(set(ids))))))
