"""The search log writer: searches are committed off the request's critical path, and made
durable on it.

A search is answered as soon as its results are ready; its row goes to a buffer that one
background thread commits, everything buffered in one transaction (under load, the searches
that arrive during a commit form the next one — no timer, so a lone search is written about a
millisecond after it is answered). With a journal (`service.services.search_journal`, the
default in the API: `OSPO_SEARCH_LOG_JOURNAL`), the row is also appended to a local
write-ahead file before the answer leaves: a `kill -9` or OOM kill loses no answered search,
and a power loss at most those not committed yet (normally the last milliseconds, as without
the journal; during a database outage, at most one retry interval: the journal is fsync'd
before each retry). The journal left by a dead process is replayed at start-up and every
`ORPHAN_SCAN_S`. The guarantee events rely on: a search an event names is stored before
the event is. `wait_written` blocks until the named searches of this process are committed;
the events service calls it first, then gives searches buffered by another API process a
short grace (`UNKNOWN_SEARCH_GRACE_S`) before storing the event as naming an unknown search.
A database outage keeps the rows buffered (and journaled) and retried with backoff, never
dropped; stopping flushes, and what it could not flush stays in the journal for the next start.
A row the database refuses for itself (not an outage) is found by halving the batch, logged,
counted (`ospo_search_log_dropped_total`) and dropped, so it can never hold up the others;
`service.schemas.text` refuses the inputs known to cause that at the door.
`OSPO_SEARCH_LOG_BACKGROUND=false` commits each search before answering it instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from service.db.engine import session_scope
from service.observability import SEARCH_LOG_BUFFER, SEARCH_LOG_DROPPED, SEARCH_LOG_RECOVERED
from service.repositories.searches import add_searches
from service.services.search_journal import SearchJournal, Segment, encode

log = logging.getLogger(__name__)

UNKNOWN_SEARCH_GRACE_S = 0.5  # another API process commits its buffer well within this
STOP_FLUSH_S = 30.0  # how long stopping keeps retrying a failing database
ORPHAN_SCAN_S = 30.0  # how often a journal left by a dead process is looked for
ROTATE_BYTES = 1 << 20  # a journal segment this large is replaced (~1,500 searches)
# The database or the connection to it is down: wait and retry the same rows.
OUTAGE = (OperationalError, InterfaceError)


class SearchLogWriter:
    def __init__(
        self, database_url: str, background: bool = True, journal_dir: Path | None = None
    ) -> None:
        self.database_url = database_url
        self.background = background
        # Only the background writer holds rows after answering; a synchronous one needs none.
        self.journal = SearchJournal(journal_dir) if journal_dir and background else None
        self._segment: Segment | None = None  # the journal segment rows are appended to
        self._full: Segment | None = None  # one set aside, deleted once its rows are committed
        self._kept = False  # rows were given up on (stopping): the journal keeps them
        self._buffer: list[dict[str, Any]] = []
        self._unwritten: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Replay what dead processes left in the journal (once here, so an API starting
        after a crash serves with its searches stored; a database not reachable yet leaves it
        to the periodic scan), then start the background writer."""
        if self.background and self._thread is None:
            if self.journal is not None:
                try:
                    self._segment = self.journal.new_segment()
                except OSError as e:  # still serving; searches wait in memory only
                    log.error("search journal unavailable (%s): %s", self.journal.directory, e)
                try:
                    self.recover(give_up_after=5.0)
                except Exception:  # noqa: BLE001 - the periodic scan tries again
                    log.exception("search log: replaying the journal failed")
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="search-log", daemon=True)
            self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        """Log one search (a `Search` row as a dict). Without the background thread (not
        started, or `background=False`) it is committed before this returns; with a journal it
        is in the journal file when this returns."""
        if self._thread is None:
            self._write([row])
            return
        line = None
        if self.journal is not None:
            try:
                line = encode(row)
            except (TypeError, ValueError) as e:  # the database cannot hold it either
                log.error("search %s cannot be journaled: %s", row["id"], e)
        with self._cond:
            if line is not None and self._segment is not None:
                try:
                    self._segment.append(line)
                except OSError as e:  # disk full: still answered, logged from memory
                    log.error("search journal write failed: %s", e)
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
        with self._cond:
            segment, self._segment = self._segment, None
            flushed = not self._buffer and not thread.is_alive() and not self._kept
        if segment is not None:  # flushed: every row it held is committed
            (segment.retire if flushed else segment.release)()

    def recover(self, give_up_after: float | None = None) -> int:
        """Store the rows of every orphaned journal segment; returns how many were read.
        A segment whose rows could not be stored (database down) stays for the next scan."""
        if self.journal is None:
            return 0
        recovered = 0
        for segment, rows in self.journal.orphans():
            if rows and not self._write_retrying(rows, give_up_after):
                segment.release()
                continue
            segment.retire()
            recovered += len(rows)
            SEARCH_LOG_RECOVERED.inc(len(rows))
            if rows:
                log.warning("search log: replayed %d searches from %s", len(rows), segment.path)
        return recovered

    def _run(self) -> None:
        next_scan = time.monotonic() + ORPHAN_SCAN_S
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._buffer or self._stopping, ORPHAN_SCAN_S)
                rows, self._buffer = self._buffer, []
                stopping = self._stopping
                full = self._rotate_if_full() if rows else None
            if rows:
                written = self._write_retrying(rows, STOP_FLUSH_S if stopping else None)
                with self._cond:
                    self._unwritten.difference_update(r["id"] for r in rows)
                    if not written:  # kept on disk for the next start to replay
                        self._kept = True
                    elif not self._buffer and self._segment is not None and not self._kept:
                        # Nothing arrived meanwhile: every row of the segment is committed.
                        self._truncate(self._segment)
                    SEARCH_LOG_BUFFER.set(len(self._buffer))
                    self._cond.notify_all()
                if full is not None:
                    self._full = None
                    (full.retire if written else full.release)()
            elif stopping:
                return
            if time.monotonic() >= next_scan and not stopping:
                next_scan = time.monotonic() + ORPHAN_SCAN_S
                try:
                    self.recover(give_up_after=5.0)
                except Exception:  # noqa: BLE001 - the next scan tries again
                    log.exception("search log: replaying the journal failed")

    def _rotate_if_full(self) -> Segment | None:
        """Under the lock: set a segment past `ROTATE_BYTES` aside (returned; deleted once the
        rows just taken are committed) for a new one. Rare: only under sustained load."""
        if self.journal is None or self._segment is None or self._segment.size < ROTATE_BYTES:
            return None
        try:
            fresh = self.journal.new_segment()
        except OSError as e:  # the full one goes on growing; replayed whole at worst
            log.error("search journal: no new segment: %s", e)
            return None
        self._full, self._segment = self._segment, fresh
        return self._full

    def _truncate(self, segment: Segment) -> None:
        try:
            segment.truncate()
        except OSError as e:  # replayed (idempotently) at worst
            log.warning("search journal: could not empty %s: %s", segment.path, e)

    def _sync_waiting(self, _: RetryCallState) -> None:
        # While the database is down the rows wait in the journal: put it on disk, so that a
        # power loss during an outage loses at most one retry interval.
        with self._cond:
            segments = [s for s in (self._segment, self._full) if s is not None]
        for segment in segments:
            with contextlib.suppress(OSError):
                segment.sync()

    def _write_retrying(self, rows: list[dict[str, Any]], give_up_after: float | None) -> bool:
        """Write `rows`, retrying outages; False when it gave up (only with `give_up_after`)."""
        retrying = Retrying(
            retry=retry_if_exception_type(OUTAGE),
            wait=wait_exponential(multiplier=0.1, max=5.0),
            stop=stop_after_delay(give_up_after) if give_up_after else stop_never,
            before_sleep=self._before_retry,
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._write_isolating(rows)
        except Exception:  # noqa: BLE001 - only with a time limit: say what could not be stored
            log.error(
                "search log: %d searches could not be stored in time%s",
                len(rows), "; they stay in the journal" if self.journal else "",
            )  # fmt: skip
            return False
        return True

    def _before_retry(self, state: RetryCallState) -> None:
        before_sleep_log(log, logging.WARNING)(state)
        self._sync_waiting(state)

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
