"""Beat's scheduling decision: interaction labels refresh, and a run starts only when enough new
interaction-labelled queries arrived since the last finished run."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.db.engine import session_scope
from service.db.models import utcnow
from service.records import LabelRecord
from service.repositories.labels import upsert_labels
from service.repositories.runs import create_run, finish_run, live_run
from service.settings import get_settings
from trainer.online.update import labelled_query_count, last_labelled_count


def test_counts_only_interaction_queries(db_url: str) -> None:
    with session_scope(db_url) as s:
        upsert_labels(s, [LabelRecord(f"q{i}", "p", 1.0, "chorus") for i in range(5)])
        upsert_labels(s, [LabelRecord(f"q{i}", "p", 0.3, "interactions") for i in range(3)])
    with session_scope(db_url) as s:
        assert labelled_query_count(s) == 3
        assert last_labelled_count(s) == 0
        run = create_run(s, "ospo", {})
        finish_run(s, run.id, "rejected", metrics={"labelled_queries": 3})
    with session_scope(db_url) as s:
        assert last_labelled_count(s) == 3


def test_maybe_train_waits_for_new_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ospo.db'}"
    monkeypatch.setenv("OSPO_DATABASE_URL", url)
    monkeypatch.setenv("OSPO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OSPO_TRAIN_MIN_NEW_QUERIES", "2")
    get_settings.cache_clear()
    try:
        upgrade(url)
        from trainer.online.tasks import maybe_train

        with session_scope(url) as s:
            upsert_labels(s, [LabelRecord("only one", "p", 1.0, "chorus")])
        out = maybe_train.run()  # the task body, in process (no broker)
        assert out["started"] is False and "0 new" in out["reason"]
        with session_scope(url) as s:
            assert live_run(s) is None
            stale = create_run(s, "ospo", {})
            stale.status, stale.lease_expires_at = "running", utcnow()
        out = maybe_train.run()
        assert out["expired"] == 1  # a dead worker's run is failed, not left running
    finally:
        get_settings.cache_clear()
