"""The background search log: nothing answered is lost, and events find the searches they name."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Search, utcnow
from service.errors import NotFound
from service.schemas.public import EventIn
from service.services.events import record_events
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
    assert record_events(db_url, events, here).stored == 2
    with pytest.raises(NotFound) as e:
        record_events(
            db_url,
            [EventIn(event_id="x", search_id="never", product_id="p1", type="click")],
            here,
        )
    assert "unknown search_id" in e.value.message
    here.stop()
    elsewhere.stop()


def test_synchronous_mode_commits_before_returning(db_url: str) -> None:
    log = SearchLogWriter(db_url, background=False)
    log.start()
    row = _row()
    log.submit(row)
    assert row["id"] in _stored(db_url)
    log.stop()
