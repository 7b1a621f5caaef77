"""indexes for search analytics (GET /admin/analytics): the adapter filter and the no-result
searches; bench/results/analytics.json has the plans and timings with and without each, and
of the candidates measured and left out

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Word for word service/repositories/analytics.py's NO_RESULT: a partial index serves a query
# only when the planner proves the query's predicate implies the index's. (Copied, not
# imported: a migration must not change when the service's code does.)
NO_RESULT = "json_array_length(product_ids) = 0"


def upgrade() -> None:
    # The adapter filter: the searches of one adapter (or of none: IS NULL) in a time range,
    # instead of every search of the range.
    op.create_index("ix_searches_adapter_created_at", "searches", ["adapter", "created_at"])
    # The no-result searches (a few percent), by time and adapter: the summary counts them per
    # (day, adapter) from this index alone, and they are the only rows the top-no-result-queries
    # statement reads; without it both parse the product_ids JSON of every search in the window.
    op.create_index(
        "ix_searches_no_result",
        "searches",
        ["created_at", "adapter"],
        postgresql_where=sa.text(NO_RESULT),
        sqlite_where=sa.text(NO_RESULT),
    )


def downgrade() -> None:
    op.drop_index("ix_searches_no_result", "searches")
    op.drop_index("ix_searches_adapter_created_at", "searches")
