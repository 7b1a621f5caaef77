"""Migrations and repositories on SQLite and the real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect

from service.db.engine import get_engine, session_scope
from service.db.migrate import downgrade, upgrade
from service.records import LabelRecord, ProductRecord
from service.repositories.labels import count_labels, targets_by_query, upsert_labels
from service.repositories.products import count_products, upsert_products

TABLES = {"products", "searches", "events", "relevance_labels", "adapters", "training_runs"}


def _tables(url: str) -> set[str]:
    get_engine.cache_clear()
    return set(inspect(get_engine(url)).get_table_names())


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    assert not (_tables(empty_db_url) & TABLES)
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES | {"alembic_version"}
    downgrade(empty_db_url)
    assert not (_tables(empty_db_url) & TABLES)
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES


def test_product_upsert_is_idempotent(db_url: str) -> None:
    p = ProductRecord(id="p1", title="Red mug", source="jsonl", attributes={"color": "red"})
    with session_scope(db_url) as s:
        upsert_products(s, [p, ProductRecord(id="p2", title="Blue mug", source="jsonl")])
    with session_scope(db_url) as s:
        upsert_products(s, [ProductRecord(id="p1", title="Red mug XL", source="jsonl")])
        assert count_products(s) == 2
    with session_scope(db_url) as s:
        from service.db.models import Product

        assert s.get(Product, "p1").title == "Red mug XL"


def test_labels_upsert_and_targets(db_url: str) -> None:
    with session_scope(db_url) as s:
        upsert_labels(
            s,
            [
                LabelRecord("Red  Mug", "p1", 0.5, "chorus"),
                LabelRecord("red mug", "p1", 1.0, "chorus"),  # same normalised key: last wins
                LabelRecord("red mug", "p1", 0.1, "interactions"),
                LabelRecord("red mug", "p2", 0.0, "chorus"),
            ],
        )
    with session_scope(db_url) as s:
        assert count_labels(s) == 3
        assert targets_by_query(s) == {"red mug": {"p1": 1.0, "p2": 0.0}}
        assert targets_by_query(s, ["interactions"]) == {"red mug": {"p1": 0.1}}
