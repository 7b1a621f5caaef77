"""events may name a search the log does not know (stored, marked, left out of labels); worker
heartbeats (which queues a live worker consumes)

An event naming a search lost on our side (a crash before the search was logged) is stored
instead of refusing the shopper's batch, so `events.search_id` no longer references
`searches.id`; `search_known` is false until the search arrives (a replayed search log marks
its events known again). Workers write a heartbeat row per process so that a request which
would wait on a worker can answer 503 at once when none consumes its queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
# 0001 created the foreign key without a name: PostgreSQL named it by its convention, SQLite
# keeps none, so the batch (table copy) on SQLite finds it through this naming convention.
FK_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("events", naming_convention=FK_NAMES) as batch:
            batch.drop_constraint("fk_events_search_id_searches", type_="foreignkey")
    else:
        op.drop_constraint("events_search_id_fkey", "events", type_="foreignkey")
    op.add_column(
        "events",
        sa.Column("search_known", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("seen_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.execute("DELETE FROM events WHERE NOT search_known")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("search_known")
        batch.create_foreign_key("events_search_id_fkey", "searches", ["search_id"], ["id"])
