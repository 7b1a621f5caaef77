"""SQLAlchemy 2.0 typed models. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.domain import AdapterStatus, ComparisonStatus, EventType, RuleKind, RunStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores no offset, so naive values read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Product(Base):
    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    search_text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Search(Base):
    __tablename__ = "searches"
    # Search analytics (migration 0004, service/repositories/analytics.py): the adapter filter,
    # and the no-result searches alone (partial).
    __table_args__ = (
        Index("ix_searches_adapter_created_at", "adapter", "created_at"),
        Index(
            "ix_searches_no_result",
            "created_at",
            "adapter",
            postgresql_where=text("json_array_length(product_ids) = 0"),
            sqlite_where=text("json_array_length(product_ids) = 0"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    query: Mapped[str] = mapped_column(Text)
    normalized_query: Mapped[str] = mapped_column(Text, index=True)
    rewrite: Mapped[str] = mapped_column(Text)
    rewrite_source: Mapped[str] = mapped_column(String(16))
    adapter: Mapped[str | None] = mapped_column(String(128))
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    k: Mapped[int] = mapped_column(Integer)
    product_ids: Mapped[list[Any]] = mapped_column(default=list)
    scores: Mapped[list[Any]] = mapped_column(default=list)
    index_version: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[float] = mapped_column(Float)
    user_id: Mapped[str | None] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # {"brand": [...], "price": {...}, "attributes": {...}} as the request gave them.
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    rules: Mapped[list[Any] | None] = mapped_column(JSON)  # ids of the rules that fired
    # Interleaved searches: the comparison and, per shown position, the side that put it there.
    comparison_id: Mapped[str | None] = mapped_column(String(36), index=True)
    teams: Mapped[list[Any] | None] = mapped_column(JSON)
    # Exploration (trainer/online/propensity.py): the 1-based pair (k, k+1) drawn, and whether it
    # was shown swapped.
    explore_pair: Mapped[int | None] = mapped_column(Integer)
    explore_swapped: Mapped[bool | None] = mapped_column(Boolean)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    # Not a foreign key (migration 0005): an event naming a search the log lost is stored.
    search_id: Mapped[str] = mapped_column(String(36), index=True)
    product_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[EventType] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    # 1-based rank of the product in the search's results (None: it was not shown).
    position: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # False while no logged search has `search_id`: interaction labels leave the event out
    # until the search arrives (another process's log buffer, a replayed write-ahead file).
    search_known: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class WorkerHeartbeat(Base):
    """A live Celery worker process and the queues it consumes (service/workers.py)."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[list[Any]] = mapped_column()
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RelevanceLabel(Base):
    __tablename__ = "relevance_labels"
    __table_args__ = (
        UniqueConstraint("normalized_query", "product_id", "source", name="uq_label_query_product"),
        Index("ix_labels_source_query", "source", "normalized_query"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    query: Mapped[str] = mapped_column(Text)
    normalized_query: Mapped[str] = mapped_column(String(512))
    product_id: Mapped[str] = mapped_column(String(64))
    gain: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Adapter(Base):
    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(Text)
    parent: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[AdapterStatus] = mapped_column(String(16), default=AdapterStatus.candidate)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[RunStatus] = mapped_column(String(16), default=RunStatus.queued, index=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    adapter: Mapped[str | None] = mapped_column(String(128))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StoredRewrite(Base):
    """A policy answer for one normalised query, shared by every API process and worker."""

    __tablename__ = "rewrites"

    adapter: Mapped[str] = mapped_column(String(128), primary_key=True)
    prompt_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    normalized_query: Mapped[str] = mapped_column(String(512), primary_key=True)
    # None: the policy answered nothing usable; search uses the raw query without asking again.
    answer: Mapped[str | None] = mapped_column(Text)
    raw_completion: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Rule(Base):
    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[RuleKind] = mapped_column(String(16))
    query: Mapped[str | None] = mapped_column(String(512), index=True)  # normalised; None: synonym
    terms: Mapped[list[Any]] = mapped_column(default=list)  # a synonym group
    product_ids: Mapped[list[Any]] = mapped_column(default=list)  # pinned (in order) or hidden
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Comparison(Base):
    """An interleaved comparison of a candidate adapter with what serves (trainer/interleave)."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(36))
    candidate: Mapped[str] = mapped_column(String(128))
    baseline: Mapped[str | None] = mapped_column(String(128))  # None: the raw query serves
    status: Mapped[ComparisonStatus] = mapped_column(
        String(16), default=ComparisonStatus.running, index=True
    )
    share: Mapped[float] = mapped_column(Float)  # of live searches interleaved
    max_searches: Mapped[int] = mapped_column(Integer)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime())
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
