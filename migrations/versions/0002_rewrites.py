"""rewrite store: one row per (adapter, prompt version, normalised query)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rewrites",
        sa.Column("adapter", sa.String(128), primary_key=True),
        sa.Column("prompt_version", sa.String(64), primary_key=True),
        sa.Column("normalized_query", sa.String(512), primary_key=True),
        sa.Column("answer", sa.Text()),
        sa.Column("raw_completion", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("origin IN ('warmup', 'miss')", name="ck_rewrite_origin"),
    )


def downgrade() -> None:
    op.drop_table("rewrites")
