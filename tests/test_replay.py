"""Batch log replay: idempotent ingestion, dataset labels as logs, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.catalog.formats import FormatError
from service.db.engine import session_scope
from service.repositories.labels import targets_by_query
from service.repositories.searches import count_events
from tests.conftest import DATA
from trainer.online.interaction_labels import EventWeights, refresh_interaction_labels
from trainer.online.replay import labels_as_log, read_log, replay


def _log(tmp_path: Path) -> Path:
    lines = [
        {
            "search_id": "s1",
            "query": "Red Mug",
            "ts": "2026-01-01T10:00:00Z",
            "results": ["a", "b"],
            "events": [
                {"product_id": "a", "type": "click"},
                {"product_id": "a", "type": "purchase"},
            ],
        },
        {
            "search_id": "s2",
            "query": "red mug",
            "results": ["a", "b"],
            "events": [{"event_id": "x", "product_id": "b", "type": "add_to_cart"}],
        },
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_replay_is_idempotent_and_feeds_labels(db_url: str, tmp_path: Path) -> None:
    path = _log(tmp_path)
    first = replay(db_url, read_log(path), progress=False)
    assert first.as_dict() == {
        "searches_read": 2,
        "searches_new": 2,
        "events_read": 3,
        "events_new": 3,
        "distinct_queries": 1,
    }
    again = replay(db_url, read_log(path), progress=False)
    assert again.searches_new == 0 and again.events_new == 0
    with session_scope(db_url) as s:
        assert count_events(s) == 3
        refresh_interaction_labels(s, EventWeights(), min_support=1)
    with session_scope(db_url) as s:
        assert targets_by_query(s, ["interactions"]) == {"red mug": {"a": 0.5, "b": 0.3}}


def test_chorus_labels_as_logs() -> None:
    searches = list(labels_as_log("chorus", DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"))
    assert len(searches) == 116
    assert sum(len(s.events) for s in searches) == 3085
    again = list(labels_as_log("chorus", DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"))
    assert [s.search_id for s in searches] == [s.search_id for s in again]  # stable ids
    types = {e["type"] for s in searches for e in s.events}
    assert types == {"purchase", "add_to_cart", "click", "impression"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "invalid JSON"),
        ('{"query": "x"}', "search_id"),
        (
            '{"search_id": "s", "query": "x", "events": [{"product_id": "a", "type": "like"}]}',
            "type",
        ),
        ('{"search_id": "s", "query": "x", "ts": "yesterday"}', "timestamp"),
    ],
)
def test_bad_log_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(FormatError, match=message):
        list(read_log(path))


def test_cli_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import _load_plugins, app
    from service.settings import get_settings

    monkeypatch.setenv("OSPO_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    _load_plugins()
    runner = CliRunner()
    from service.db.migrate import upgrade

    upgrade(get_settings().resolved_database_url)
    missing = runner.invoke(app, ["replay", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in " ".join(missing.output.split())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x"}\n')
    res = runner.invoke(app, ["replay", str(bad)])
    assert res.exit_code == 2 and "search_id" in " ".join(res.output.split())
    ok = runner.invoke(app, ["replay", str(_log(tmp_path))])
    assert ok.exit_code == 0, ok.output
    assert '"searches_new": 2' in ok.output
    get_settings.cache_clear()
