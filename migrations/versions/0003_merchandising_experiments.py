"""merchandising rules, filters and fired rules on searches, click positions, interleaved
comparisons and the exploration swaps that position-debiased labels are estimated from

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RUN_STATUSES = "status IN ('queued', 'running', 'promoted', 'rejected', 'failed'{})"


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("query", sa.String(512)),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("product_ids", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('synonym', 'pin', 'hide')", name="ck_rule_kind"),
    )
    op.create_index("ix_rules_query", "rules", ["query"])
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("run_id", sa.String(36)),
        sa.Column("candidate", sa.String(128), nullable=False),
        sa.Column("baseline", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("max_searches", sa.Integer(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('running', 'won', 'lost', 'expired', 'aborted')",
            name="ck_comparison_status",
        ),
    )
    op.create_index("ix_comparisons_status", "comparisons", ["status"])
    # A run whose candidate passed the offline gate waits for its interleaved comparison.
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_constraint("ck_run_status", type_="check")
        batch.create_check_constraint("ck_run_status", _RUN_STATUSES.format(", 'comparing'"))
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("filters", sa.JSON()))
        batch.add_column(sa.Column("rules", sa.JSON()))
        batch.add_column(sa.Column("comparison_id", sa.String(36)))
        batch.add_column(sa.Column("teams", sa.JSON()))
        batch.add_column(sa.Column("explore_pair", sa.Integer()))
        batch.add_column(sa.Column("explore_swapped", sa.Boolean()))
    op.create_index("ix_searches_comparison_id", "searches", ["comparison_id"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("position", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_constraint("ck_run_status", type_="check")
        batch.create_check_constraint("ck_run_status", _RUN_STATUSES.format(""))
    with op.batch_alter_table("events") as batch:
        batch.drop_column("position")
    op.drop_index("ix_searches_comparison_id", "searches")
    with op.batch_alter_table("searches") as batch:
        for name in (
            "explore_swapped",
            "explore_pair",
            "teams",
            "comparison_id",
            "rules",
            "filters",
        ):
            batch.drop_column(name)
    op.drop_index("ix_comparisons_status", "comparisons")
    op.drop_table("comparisons")
    op.drop_index("ix_rules_query", "rules")
    op.drop_table("rules")
