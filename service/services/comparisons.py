"""Interleaved comparisons: started by an update whose candidate passed the offline gate,
served by every API process, decided by beat from the search log (service/interleaving.py).

Life of a comparison:
1. `start_comparison` (the update task) stores it `running` with the adapter that serves as
   baseline (None: the raw query) and puts the run in `comparing`.
2. Each API process's `ComparisonWatcher` reloads the running comparison every few seconds;
   a share of its searches is interleaved (service/services/search.py) and logged with the
   comparison id and the teams.
3. `decide_running` (beat, `OSPO_INTERLEAVE_CHECK_S`) recomputes the tally from the database:
   `won` promotes the candidate (the usual promotion: load, warm, flip) and the run ends
   `promoted`; `lost` or `expired` reject it and the run ends `rejected`; a baseline that no
   longer serves (someone promoted or rolled back by hand) `aborted`s it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from service.db.engine import session_scope
from service.db.models import Comparison, utcnow
from service.domain import AdapterStatus, ComparisonStatus, RunStatus
from service.errors import Conflict, NotFound
from service.interleaving import Tally, decide, outcome, tally
from service.repositories.adapters import active_adapter, set_status
from service.repositories.comparisons import (
    add_comparison,
    finish_comparison,
    get_comparison,
    interleaved_searches,
    list_comparisons,
    running_comparison,
)
from service.repositories.runs import finish_run
from service.schemas.comparisons import ComparisonOut, TallyOut
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Live:
    """The running comparison as an API process serves it."""

    id: str
    candidate: str
    baseline: str | None
    share: float


class ComparisonWatcher:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.current: Live | None = None

    def reload(self) -> None:
        with session_scope(self.database_url) as session:
            row = running_comparison(session)
            self.current = (
                Live(row.id, row.candidate, row.baseline, row.share) if row is not None else None
            )


def start_comparison(
    settings: Settings, run_id: str | None, candidate: str, baseline: str | None
) -> str:
    with session_scope(settings.resolved_database_url) as session:
        if running_comparison(session) is not None:
            raise Conflict("another comparison is running")
        row = add_comparison(
            session,
            {
                "id": str(uuid.uuid4()),
                "run_id": run_id,
                "candidate": candidate,
                "baseline": baseline,
                "status": ComparisonStatus.running,
                "share": settings.interleave_share,
                "max_searches": settings.interleave_max_searches,
                "deadline": utcnow() + timedelta(hours=settings.interleave_max_hours),
                "result": {},
            },
        )
        return row.id


def recompute(settings: Settings, comparison_id: str) -> Tally:
    """The comparison's tally from the search log and events, as of now."""
    with session_scope(settings.resolved_database_url) as session:
        rows = interleaved_searches(session, comparison_id)
    return tally(
        [outcome(teams, positions) for _, teams, positions in rows], settings.interleave_confidence
    )


def _out(row: Comparison, t: Tally) -> ComparisonOut:
    return ComparisonOut(
        id=row.id,
        run_id=row.run_id,
        candidate=row.candidate,
        baseline=row.baseline,
        status=row.status,
        share=row.share,
        max_searches=row.max_searches,
        deadline=row.deadline,
        created_at=row.created_at,
        decided_at=row.decided_at,
        tally=TallyOut(**t.as_dict()),
        decision=row.result or {},
    )


def comparisons_out(settings: Settings, limit: int = 50) -> list[ComparisonOut]:
    with session_scope(settings.resolved_database_url) as session:
        rows = list_comparisons(session, limit)
        session.expunge_all()
    return [_out(row, recompute(settings, row.id)) for row in rows]


def _close(
    settings: Settings, row: Comparison, status: ComparisonStatus, t: Tally, why: str
) -> dict[str, Any]:
    """Record the decision, then act on it: promote a winner, reject anything else."""
    url = settings.resolved_database_url
    result = {"tally": t.as_dict(), "reason": why, "confidence": settings.interleave_confidence}
    promotion: dict[str, Any] | None = None
    if status == ComparisonStatus.won:
        from service.services.promotion import promote

        try:
            promotion = promote(settings, row.candidate)
        except Exception as e:  # noqa: BLE001 - the baseline keeps serving
            result["promotion_error"] = str(e)[:500]
            status = ComparisonStatus.aborted
    with session_scope(url) as session:
        finish_comparison(session, row.id, status, result)
        if status != ComparisonStatus.won:
            set_status(session, row.candidate, AdapterStatus.rejected)
        if row.run_id is not None:
            finish_run(
                session,
                row.run_id,
                RunStatus.promoted if status == ComparisonStatus.won else RunStatus.rejected,
                metrics={"comparison": {"id": row.id, "status": status, **result}}
                | ({"promotion": promotion} if promotion else {}),
            )
    log.info("comparison %s of %s: %s (%s)", row.id, row.candidate, status, why)
    return {"id": row.id, "candidate": row.candidate, "status": status, **result}


def decide_running(settings: Settings) -> list[dict[str, Any]]:
    """Decide the running comparison, if any (beat runs this every `interleave_check_s`)."""
    with session_scope(settings.resolved_database_url) as session:
        row = running_comparison(session)
        serving = active_adapter(session)
        session.expunge_all()
    if row is None:
        return []
    t = recompute(settings, row.id)
    if (serving.name if serving else None) != row.baseline:
        return [_close(settings, row, ComparisonStatus.aborted, t, "the baseline no longer serves")]
    status = decide(
        t,
        settings.interleave_min_searches,
        row.max_searches,
        past_deadline=utcnow() >= row.deadline,
    )
    if status == ComparisonStatus.running:
        return []
    why = {
        ComparisonStatus.won: "the preference's interval lies above 0",
        ComparisonStatus.lost: "the preference's interval lies below 0",
        ComparisonStatus.expired: "the traffic or time budget ran out undecided",
    }[status]
    return [_close(settings, row, status, t, why)]


def abort(settings: Settings, comparison_id: str) -> ComparisonOut:
    with session_scope(settings.resolved_database_url) as session:
        row = get_comparison(session, comparison_id)
        if row is None:
            raise NotFound(f"no comparison {comparison_id}")
        if row.status != ComparisonStatus.running:
            raise Conflict(f"comparison {comparison_id} is already {row.status}")
        session.expunge_all()
    _close(settings, row, ComparisonStatus.aborted, recompute(settings, row.id), "aborted by hand")
    with session_scope(settings.resolved_database_url) as session:
        row = get_comparison(session, comparison_id)
        session.expunge_all()
    assert row is not None
    return _out(row, recompute(settings, comparison_id))
