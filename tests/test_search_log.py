"""The background search log: nothing answered is lost (a killed process's journal is
replayed), and events find the searches they name (or wait, marked, for them)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Event, Search, utcnow
from service.repositories.interactions import logged_events
from service.schemas.public import EventIn
from service.services.events import record_events
from service.services.search_journal import SearchJournal, encode
from service.services.search_log import SearchLogWriter


def _row(query: str = "usb hub") -> dict:
    return {
        "id": str(uuid.uuid4()),
        "query": query,
        "normalized_query": query,
        "rewrite": query,
        "rewrite_source": "none",
        "adapter": None,
        "prompt_version": None,
        "k": 10,
        "product_ids": ["p1"],
        "scores": [0.5],
        "index_version": "v",
        "latency_ms": 1.0,
        "user_id": None,
        "session_id": None,
        "created_at": utcnow(),
    }


def _events(url: str) -> dict[str, tuple[bool, int | None]]:
    """event_id → (search_known, position)."""
    with session_scope(url) as s:
        rows = s.execute(select(Event.event_id, Event.search_known, Event.position))
        return {eid: (known, pos) for eid, known, pos in rows}


def _stored(url: str) -> set[str]:
    with session_scope(url) as s:
        return set(s.scalars(select(Search.id)))


def test_concurrent_searches_are_all_written_in_batches(db_url: str) -> None:
    log = SearchLogWriter(db_url)
    log.start()
    rows = [_row(f"q{i}") for i in range(200)]

    def submit(chunk: list[dict]) -> None:
        for r in chunk:
            log.submit(r)

    threads = [threading.Thread(target=submit, args=(rows[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.wait_written([r["id"] for r in rows], timeout=30)
    assert {r["id"] for r in rows} <= _stored(db_url)
    log.stop()


def test_an_outage_keeps_rows_buffered_until_the_database_is_back(tmp_path: Path) -> None:
    """No schema yet: every write fails and is retried; once migrated, the rows land."""
    url = f"sqlite:///{tmp_path / 'late.db'}"
    log = SearchLogWriter(url)
    log.start()
    rows = [_row(f"q{i}") for i in range(5)]
    for r in rows:
        log.submit(r)
    assert not log.wait_written([r["id"] for r in rows], timeout=0.5)  # still buffered
    upgrade(url)
    assert log.wait_written([r["id"] for r in rows], timeout=30)
    assert {r["id"] for r in rows} == _stored(url)
    log.stop()


def test_a_row_the_database_refuses_never_holds_up_the_others(db_url: str) -> None:
    """A row that cannot be stored for its content (here: a value JSON cannot encode; in the
    field, a NUL in a query on PostgreSQL) is dropped and counted; every other row of its
    batch and of later batches is stored, and the writer keeps going."""
    dropped = REGISTRY.get_sample_value("ospo_search_log_dropped_total") or 0.0
    log = SearchLogWriter(db_url)
    rows = [_row(f"q{i}") for i in range(20)]
    poison = {**_row("poison"), "product_ids": [object()]}
    with log._cond:  # one batch: the poison in the middle of good rows
        for r in [*rows[:10], poison, *rows[10:]]:
            log._buffer.append(r)
            log._unwritten.add(r["id"])
    log.start()
    assert log.wait_written([r["id"] for r in [*rows, poison]], timeout=30)
    later = _row("after")
    log.submit(later)
    assert log.wait_written([later["id"]], timeout=30)
    assert _stored(db_url) == {r["id"] for r in [*rows, later]}
    assert REGISTRY.get_sample_value("ospo_search_log_dropped_total") == dropped + 1
    log.stop()


def test_stop_flushes_the_buffer(db_url: str) -> None:
    log = SearchLogWriter(db_url)
    log.start()
    rows = [_row(f"q{i}") for i in range(50)]
    for r in rows:
        log.submit(r)
    log.stop()
    assert {r["id"] for r in rows} <= _stored(db_url)


def test_an_event_finds_a_search_still_buffered_here_or_in_another_process(db_url: str) -> None:
    here, elsewhere = SearchLogWriter(db_url), SearchLogWriter(db_url)
    here.start()
    elsewhere.start()
    mine, theirs = _row("mine"), _row("theirs")
    here.submit(mine)
    elsewhere.submit(theirs)  # another API process's buffer: only the grace period covers it
    events = [
        EventIn(event_id=str(uuid.uuid4()), search_id=sid, product_id="p1", type="click")
        for sid in (mine["id"], theirs["id"])
    ]
    answer = record_events(db_url, events, here)
    assert answer.stored == 2 and answer.unknown_search == 0
    assert [r.search_known for r in answer.results] == [True, True]
    assert _events(db_url) == {e.event_id: (True, 1) for e in events}
    here.stop()
    elsewhere.stop()


def test_an_event_naming_an_unknown_search_is_stored_unlabelled_until_the_search_arrives(
    db_url: str,
) -> None:
    """A search lost on our side never costs the shopper's events: they are stored, marked
    (interaction labels skip them), and adopted with their rank when the search is logged."""
    log = SearchLogWriter(db_url)
    log.start()
    late = _row("late")
    click = EventIn(event_id="e-late", search_id=late["id"], product_id="p1", type="click")
    answer = record_events(db_url, [click], log)
    assert answer.stored == 1 and answer.unknown_search == 1
    assert answer.results[0].status == "stored" and answer.results[0].search_known is False
    assert _events(db_url) == {"e-late": (False, None)}
    with session_scope(db_url) as s:
        assert logged_events(s) == []  # not learned from while its search is missing
    log.submit(late)  # e.g. replayed from the journal of the process that crashed
    assert log.wait_written([late["id"]], timeout=30)
    assert _events(db_url) == {"e-late": (True, 1)}  # p1 was shown first
    with session_scope(db_url) as s:
        assert [e.search_id for e in logged_events(s)] == [late["id"]]
    log.stop()


def test_synchronous_mode_commits_before_returning(db_url: str) -> None:
    log = SearchLogWriter(db_url, background=False)
    log.start()
    row = _row()
    log.submit(row)
    assert row["id"] in _stored(db_url)
    log.stop()


# A child process logs searches while its database cannot take them (no schema yet), then is
# killed with SIGKILL: what it answered is only in its buffer and, with a journal, on disk.
CRASHING_WRITER = """
import json, os, signal, sys
from pathlib import Path
from service.services.search_log import SearchLogWriter
url, journal, rows = sys.argv[1], sys.argv[2], json.load(sys.stdin)
log = SearchLogWriter(url, journal_dir=Path(journal) if journal else None)
log.start()
for row in rows:
    log.submit(row)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "memory-only"])
def test_searches_answered_by_a_killed_process_are_replayed_from_its_journal(
    tmp_path: Path, journal: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'ospo.db'}"
    journal_dir = tmp_path / "search-log"
    # More rows than one INSERT may bind on SQLite: a long outage's backlog is replayed too.
    rows = [{**_row(f"q{i}"), "created_at": utcnow().isoformat()} for i in range(2000)]
    killed = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, url, str(journal_dir) if journal else ""],
        input=json.dumps(rows), capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    upgrade(url)  # the database is back
    restarted = SearchLogWriter(url, journal_dir=journal_dir)
    restarted.start()  # replays what no live process holds
    restarted.stop()
    ids = {r["id"] for r in rows}
    if journal:
        assert _stored(url) == ids
        assert not list(journal_dir.glob("*.wal"))  # replayed segments are deleted
        with session_scope(url) as s:  # datetimes come back as datetimes
            assert s.get(Search, rows[0]["id"]).created_at.isoformat() == rows[0]["created_at"]
    else:
        assert _stored(url) == set()  # what the journal is for


def test_a_torn_journal_line_is_skipped_and_the_rest_replayed(db_url: str, tmp_path: Path) -> None:
    """A power loss can leave the last line half-written; a live process's segment is never
    taken for an orphan."""
    journal = SearchJournal(tmp_path / "search-log")
    live = journal.new_segment()  # held by this process, as a running API holds its own
    live.append(encode(_row("live")))
    dead = journal.new_segment()
    good = _row("good")
    dead.append(encode(good) + b'{"id": "torn", "que')
    dead.release()  # as if its process had died
    log = SearchLogWriter(db_url, journal_dir=tmp_path / "search-log")
    log.start()
    assert _stored(db_url) == {good["id"]}
    assert [p.name for p in (tmp_path / "search-log").glob("*.wal")].count(live.path.name) == 1
    log.stop()
    live.retire()


def test_the_journal_is_emptied_as_rows_commit_and_rotated_under_load(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.services.search_log as search_log

    monkeypatch.setattr(search_log, "ROTATE_BYTES", 4000)  # a few rows per segment
    journal = tmp_path / "search-log"
    log = SearchLogWriter(db_url, journal_dir=journal)
    log.start()
    rows = [_row(f"q{i}") for i in range(300)]

    def submit(chunk: list[dict]) -> None:
        for r in chunk:
            log.submit(r)

    threads = [threading.Thread(target=submit, args=(rows[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.wait_written([r["id"] for r in rows], timeout=60)
    assert {r["id"] for r in rows} <= _stored(db_url)
    lone = _row("lone")
    log.submit(lone)
    assert log.wait_written([lone["id"]], timeout=30)
    segments = list(journal.glob("*.wal"))
    assert len(segments) == 1 and segments[0].stat().st_size == 0  # committed: emptied
    log.stop()
    assert not list(journal.glob("*.wal"))
