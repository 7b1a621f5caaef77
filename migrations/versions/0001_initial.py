"""initial schema: products, searches, events, labels, adapters, training runs

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("brand", sa.String(256)),
        sa.Column("description", sa.Text()),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "searches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("normalized_query", sa.Text(), nullable=False),
        sa.Column("rewrite", sa.Text(), nullable=False),
        sa.Column("rewrite_source", sa.String(16), nullable=False),
        sa.Column("adapter", sa.String(128)),
        sa.Column("prompt_version", sa.String(64)),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("product_ids", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("index_version", sa.String(64)),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("user_id", sa.String(128)),
        sa.Column("session_id", sa.String(128)),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_searches_normalized_query", "searches", ["normalized_query"])
    op.create_index("ix_searches_created_at", "searches", ["created_at"])
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("search_id", sa.String(36), sa.ForeignKey("searches.id"), nullable=False),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.CheckConstraint(
            "type IN ('impression', 'click', 'add_to_cart', 'purchase')", name="ck_event_type"
        ),
    )
    op.create_index("ix_events_search_id", "events", ["search_id"])
    op.create_table(
        "relevance_labels",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("normalized_query", sa.String(512), nullable=False),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("gain", sa.Float(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint(
            "normalized_query", "product_id", "source", name="uq_label_query_product"
        ),
    )
    op.create_index("ix_labels_source_query", "relevance_labels", ["source", "normalized_query"])
    op.create_table(
        "adapters",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("parent", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS),
        sa.Column("retired_at", TS),
        sa.CheckConstraint(
            "status IN ('candidate', 'active', 'retired', 'rejected')", name="ck_adapter_status"
        ),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("adapter", sa.String(128)),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'promoted', 'rejected', 'failed')",
            name="ck_run_status",
        ),
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_training_runs_status", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("adapters")
    op.drop_index("ix_labels_source_query", table_name="relevance_labels")
    op.drop_table("relevance_labels")
    op.drop_index("ix_events_search_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_searches_created_at", table_name="searches")
    op.drop_index("ix_searches_normalized_query", table_name="searches")
    op.drop_table("searches")
    op.drop_table("products")
