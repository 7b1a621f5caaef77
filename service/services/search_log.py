"""The search log writer: searches are committed off the request's critical path.

A search is answered as soon as its results are ready; its row goes to a buffer that one
background thread commits, everything buffered in one transaction (under load, the searches
that arrive during a commit form the next one — no timer, so a lone search is written about a
millisecond after it is answered). The guarantee events rely on: a search an event names is
stored before the event is. `wait_written` blocks until the named searches of this process are
committed; the events service calls it first, then gives searches buffered by another API
process a short grace (`UNKNOWN_SEARCH_GRACE_S`) before rejecting an id as unknown. A database
outage keeps the rows buffered and retried (with backoff), never dropped; stopping flushes.
A row the database refuses for itself (not an outage) is found by halving the batch, logged,
counted (`ospo_search_log_dropped_total`) and dropped, so it can never hold up the others;
`service.schemas.text` refuses the inputs known to cause that at the door.
`OSPO_SEARCH_LOG_BACKGROUND=false` commits each search before answering it instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from service.db.engine import session_scope
from service.observability import SEARCH_LOG_BUFFER, SEARCH_LOG_DROPPED
from service.repositories.searches import add_searches

log = logging.getLogger(__name__)

UNKNOWN_SEARCH_GRACE_S = 0.5  # another API process commits its buffer well within this
STOP_FLUSH_S = 30.0  # how long stopping keeps retrying a failing database
# The database or the connection to it is down: wait and retry the same rows.
OUTAGE = (OperationalError, InterfaceError)


class SearchLogWriter:
    def __init__(self, database_url: str, background: bool = True) -> None:
        self.database_url = database_url
        self.background = background
        self._buffer: list[dict[str, Any]] = []
        self._unwritten: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.background and self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="search-log", daemon=True)
            self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        """Log one search (a `Search` row as a dict). Without the background thread (not
        started, or `background=False`) it is committed before this returns."""
        if self._thread is None:
            self._write([row])
            return
        with self._cond:
            self._buffer.append(row)
            self._unwritten.add(row["id"])
            SEARCH_LOG_BUFFER.set(len(self._buffer))
            self._cond.notify_all()

    def wait_written(self, ids: Iterable[str], timeout: float = 10.0) -> bool:
        """Block until none of `ids` is waiting in this process's buffer. False on timeout."""
        wanted = set(ids)
        with self._cond:
            return self._cond.wait_for(lambda: not (wanted & self._unwritten), timeout)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join(STOP_FLUSH_S + 5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._buffer or self._stopping)
                rows, self._buffer = self._buffer, []
                stopping = self._stopping
            if rows:
                self._write_retrying(rows, STOP_FLUSH_S if stopping else None)
                with self._cond:
                    self._unwritten.difference_update(r["id"] for r in rows)
                    SEARCH_LOG_BUFFER.set(len(self._buffer))
                    self._cond.notify_all()
            elif stopping:
                return

    def _write_retrying(self, rows: list[dict[str, Any]], give_up_after: float | None) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(OUTAGE),
            wait=wait_exponential(multiplier=0.1, max=5.0),
            stop=stop_after_delay(give_up_after) if give_up_after else stop_never,
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._write_isolating(rows)
        except Exception:  # noqa: BLE001 - only when stopping: say what could not be stored
            log.error("search log: %d searches could not be stored before stopping", len(rows))

    def _write_isolating(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows`; an outage propagates (retried), any other refusal is narrowed down to
        the rows that cause it, which are dropped."""
        try:
            self._write(rows)
        except OUTAGE:
            raise
        except Exception as e:  # noqa: BLE001 - a refusal of the data, not of the database
            if len(rows) == 1:
                SEARCH_LOG_DROPPED.inc()
                log.error("search %s cannot be stored, dropped: %s", rows[0]["id"], e)
                return
            half = len(rows) // 2
            self._write_isolating(rows[:half])
            self._write_isolating(rows[half:])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with session_scope(self.database_url) as session:
            add_searches(session, rows)
