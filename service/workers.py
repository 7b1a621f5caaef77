"""Which queues a live worker consumes: so that a request that would wait on a worker answers
503 at once when none is there, instead of holding the shopper (or the console) for
`OSPO_WORKER_TIMEOUT_S` before a 504.

Each Celery worker process writes a heartbeat row (its name, its queues) every `BEAT_S`
from the moment it is ready, and deletes it when it stops (trainer/online/tasks.py connects it to
Celery's worker signals). A worker is live while its row is younger than `STALE_S`, so one
killed outright reads as gone within that. The row lives in the database every process
already shares: Celery's own control broadcast (`inspect().active_queues()`) needs a broker
with fan-out, which the embedded default's SQLite broker is not.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, select

from service.db.engine import session_scope
from service.db.models import WorkerHeartbeat, utcnow
from service.errors import Unavailable
from service.repositories.upsert import upsert

log = logging.getLogger(__name__)

BEAT_S = 2.0
STALE_S = 10.0  # five beats missed: gone (also covers a few seconds of clock skew)
CACHE_S = 2.0  # how long an API process trusts its last look
RETRY_AFTER_S = 10  # about when a worker that is being started beats for the first time


class NoWorker(Unavailable):
    """No live worker consumes the queue a request would wait on."""

    code = "no_worker"


class Heartbeat:
    """A worker process's heartbeat row, written from a daemon thread."""

    def __init__(self, database_url: str, name: str, queues: list[str]) -> None:
        self.database_url = database_url
        self.name = name
        self.queues = sorted(queues)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._beat()  # live from the moment it is ready, not one period later
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(BEAT_S + 5)
        try:
            with session_scope(self.database_url) as s:
                s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == self.name))
        except Exception:  # noqa: BLE001 - the row goes stale on its own
            log.warning("could not delete the heartbeat of %s", self.name)

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            self._beat()

    def _beat(self) -> None:
        try:
            with session_scope(self.database_url) as s:
                upsert(
                    s,
                    WorkerHeartbeat.__table__,
                    [{"name": self.name, "queues": self.queues, "seen_at": utcnow()}],
                    ["name"],
                    ["queues", "seen_at"],
                )
        except Exception:  # noqa: BLE001 - the database is down: beat again next period
            log.warning("heartbeat of %s not written", self.name, exc_info=True)


def live_queues(database_url: str) -> set[str]:
    """The queues some worker beating within `STALE_S` consumes."""
    since = utcnow() - timedelta(seconds=STALE_S)
    with session_scope(database_url) as s:
        rows = s.scalars(select(WorkerHeartbeat.queues).where(WorkerHeartbeat.seen_at > since))
        return {q for queues in rows for q in queues}


class WorkerPresence:
    """An API process's view of the live workers, re-read at most every `CACHE_S`."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._seen: tuple[float, set[str]] | None = None

    def queues(self) -> set[str]:
        with self._lock:
            if self._seen is None or time.monotonic() - self._seen[0] > CACHE_S:
                self._seen = (time.monotonic(), live_queues(self.database_url))
            return self._seen[1]

    def require(self, queue: str, what: str) -> None:
        """Raise `NoWorker` (503, Retry-After) unless a live worker consumes `queue`."""
        if queue not in self.queues():
            raise NoWorker(
                f"no worker consumes the `{queue}` queue, so nothing would {what}: start one "
                f"with `ospo worker` (or `ospo up`) and retry",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
