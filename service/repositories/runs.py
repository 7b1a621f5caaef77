"""Queries on training runs, including the lease that keeps one training at a time."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import false, func, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import TrainingRun, utcnow
from service.domain import RunStatus


def create_run(session: Session, algorithm: str, config: dict[str, Any]) -> TrainingRun:
    run = TrainingRun(
        id=str(uuid.uuid4()),
        status=RunStatus.queued,
        algorithm=algorithm,
        config=config,
        metrics={},
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def list_runs(session: Session, limit: int = 50) -> Sequence[TrainingRun]:
    stmt = select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)
    return session.scalars(stmt).all()


def last_finished_run(session: Session) -> TrainingRun | None:
    stmt = (
        select(TrainingRun)
        .where(TrainingRun.status.in_((RunStatus.promoted, RunStatus.rejected)))
        .order_by(TrainingRun.finished_at.desc())
    )
    return session.scalars(stmt).first()


# PostgreSQL advisory-lock key of the one-live-run slot ("ospotrn" in ASCII). Advisory locks
# are per database, not per schema: schemas sharing a database (the tests') briefly queue
# behind each other's claims, which is harmless.
RUN_SLOT_LOCK = 0x6F73706F74726E


def lock_run_slot(session: Session) -> None:
    """Serialise claims of the one-live-run slot across processes until this transaction ends.

    Checking for a live run and then inserting one is a race between two API processes (or an
    API process and beat): both see no live run and both insert. PostgreSQL: a transaction-
    scoped advisory lock, taken before the check, makes the second claimant wait for the first
    to commit; its check then sees the first run. SQLite: a write that matches no row takes the
    database's write lock, which does the same (a concurrent writer waits on busy_timeout).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(RUN_SLOT_LOCK)))
    else:
        session.execute(
            update(TrainingRun).where(false()).values(status=TrainingRun.status),
            execution_options={"synchronize_session": False},
        )


def live_run(session: Session) -> TrainingRun | None:
    """The run holding the one-live-run slot, if any. Takes the slot's lock first
    (`lock_run_slot`), so a caller that creates a run when this is None, in the same
    transaction, cannot race another process doing the same."""
    lock_run_slot(session)
    stmt = (
        select(TrainingRun)
        .where(TrainingRun.status.in_(RunStatus.live()))
        .order_by(TrainingRun.created_at)
    )
    return session.scalars(stmt).first()


def acquire_lease(session: Session, run_id: str, owner: str, ttl: timedelta) -> bool:
    """Take the training lease for `run_id`: atomic, and refused while any *other* run holds a
    live lease. Re-acquiring one's own (or an expired) lease succeeds."""
    now = utcnow()
    holder = session.scalars(
        select(TrainingRun)
        .where(
            TrainingRun.id != run_id,
            TrainingRun.status == RunStatus.running,
            TrainingRun.lease_expires_at > now,
        )
        .with_for_update()
    ).first()
    if holder is not None:
        return False
    result = session.execute(
        update(TrainingRun)
        .where(
            TrainingRun.id == run_id,
            TrainingRun.status.in_(RunStatus.live()),
            or_(
                TrainingRun.lease_owner.is_(None),
                TrainingRun.lease_owner == owner,
                TrainingRun.lease_expires_at < now,
            ),
        )
        .values(
            lease_owner=owner, lease_expires_at=now + ttl, status=RunStatus.running, started_at=now
        )
    )
    return (result.rowcount or 0) == 1


def renew_lease(session: Session, run_id: str, owner: str, ttl: timedelta) -> bool:
    result = session.execute(
        update(TrainingRun)
        .where(
            TrainingRun.id == run_id,
            TrainingRun.lease_owner == owner,
            TrainingRun.status == RunStatus.running,
        )
        .values(lease_expires_at=utcnow() + ttl)
    )
    return (result.rowcount or 0) == 1


def finish_run(
    session: Session,
    run_id: str,
    status: str,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
    adapter: str | None = None,
) -> None:
    run = session.get(TrainingRun, run_id)
    if run is None:
        return
    run.status = status
    if metrics is not None:
        run.metrics = {**(run.metrics or {}), **metrics}
    run.error = error
    if adapter is not None:
        run.adapter = adapter
    run.finished_at = utcnow()
    run.lease_owner = None
    run.lease_expires_at = None


def expire_stale_runs(
    session: Session, now: datetime | None = None, queued_timeout: timedelta = timedelta(hours=2)
) -> int:
    """Runs whose worker died (lease expired while running) are marked failed, and so are runs
    no worker picked up within `queued_timeout` (otherwise they would block every new run)."""
    now = now or utcnow()
    lost = session.execute(
        update(TrainingRun)
        .where(TrainingRun.status == RunStatus.running, TrainingRun.lease_expires_at < now)
        .values(
            status=RunStatus.failed,
            error="worker lost: lease expired",
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    orphaned = session.execute(
        update(TrainingRun)
        .where(
            TrainingRun.status == RunStatus.queued, TrainingRun.created_at < now - queued_timeout
        )
        .values(status=RunStatus.failed, error="never picked up by a worker", finished_at=now)
    )
    return (lost.rowcount or 0) + (orphaned.rowcount or 0)
