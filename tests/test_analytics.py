"""Search analytics (`GET /admin/analytics`) against a hand-counted log, on SQLite and PostgreSQL.

The fixture below is small enough to count by hand; every expected number in these tests was
counted from it, not computed by the code under test.

    search  created_at (UTC)      adapter  query         shown         events (type position)
    s0      Feb 28 23:59:59       a1       red shoes     p1            click 1
    s1      Mar 1  10:00          a1       red shoes     p1 p2 p3      impression 1, click 2,
                                                                       click 3, add_to_cart 3
    s2      Mar 1  11:00          a1       red shoes!    p1 p2         click 1, purchase 1 (Mar 3)
    s3      Mar 1  23:59:59       -        blue hat      (none)        -
    s4      Mar 2  00:00:00       a1       blue hat?     (none)        -
    s5      Mar 2  12:00          -        red shoes     p4 p5         click (p9, not shown: no
                                                                       position), add_to_cart 1
    s6      Mar 2  13:00          a2       green sock    p6            impression 1
    s7      Mar 3  09:00          a2       red shoes     p1            click 1, click 1 (again),
                                                                       add_to_cart 1, purchase 1
    s8      Mar 3  10:00          -        zebra         (none)        -

Window [Mar 1, Mar 4): searches s1..s8 = 8; no result s3 s4 s8 = 3; clicked s1 s2 s5 s7 = 4;
carted s1 s5 s7 = 3; bought s2 s7 = 2; positioned clicks 2 3 1 1 1 (s5's has none): 5, sum 8.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from service.db.engine import get_engine, session_scope
from service.db.migrate import downgrade, upgrade
from service.repositories.analytics import (
    Window,
    as_date,
    summary_statement,
    top_queries_statement,
)
from service.repositories.searches import add_searches, insert_events
from service.services.analytics import search_analytics
from tests.conftest import make_api_client, write_title_index

KEY = {"Authorization": "Bearer s3cret"}


def _t(day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


SEARCHES = [
    # id, created_at, adapter, query, normalised query, shown products
    ("s0", _t(28, 23, 59, 59, month=2), "a1", "red shoes", "red shoes", ["p1"]),
    ("s1", _t(1, 10), "a1", "red shoes", "red shoes", ["p1", "p2", "p3"]),
    ("s2", _t(1, 11), "a1", "red shoes!", "red shoes", ["p1", "p2"]),
    ("s3", _t(1, 23, 59, 59), None, "blue hat", "blue hat", []),
    ("s4", _t(2), "a1", "blue hat?", "blue hat", []),
    ("s5", _t(2, 12), None, "red shoes", "red shoes", ["p4", "p5"]),
    ("s6", _t(2, 13), "a2", "green sock", "green sock", ["p6"]),
    ("s7", _t(3, 9), "a2", "red shoes", "red shoes", ["p1"]),
    ("s8", _t(3, 10), None, "zebra", "zebra", []),
]
EVENTS = [
    # search, product, type, position, ts
    ("s0", "p1", "click", 1, _t(1, 0, 0, 1)),
    ("s1", "p1", "impression", 1, _t(1, 10)),
    ("s1", "p2", "click", 2, _t(1, 10, 1)),
    ("s1", "p3", "click", 3, _t(1, 10, 2)),
    ("s1", "p3", "add_to_cart", 3, _t(1, 10, 3)),
    ("s2", "p1", "click", 1, _t(1, 11, 1)),
    ("s2", "p1", "purchase", 1, _t(3, 8)),  # two days later: still s2's, so Mar 1's
    ("s5", "p9", "click", None, _t(2, 12, 1)),
    ("s5", "p4", "add_to_cart", 1, _t(2, 12, 2)),
    ("s6", "p6", "impression", 1, _t(2, 13)),
    ("s7", "p1", "click", 1, _t(3, 9, 1)),
    ("s7", "p1", "click", 1, _t(3, 9, 2)),
    ("s7", "p1", "add_to_cart", 1, _t(3, 9, 3)),
    ("s7", "p1", "purchase", 1, _t(3, 9, 4)),
]


def _fill(url: str) -> None:
    with session_scope(url) as s:
        add_searches(
            s,
            [
                {
                    "id": sid,
                    "query": q,
                    "normalized_query": nq,
                    "rewrite": q,
                    "rewrite_source": "cache" if adapter else "none",
                    "adapter": adapter,
                    "prompt_version": None,
                    "k": 10,
                    "product_ids": shown,
                    "scores": [1.0] * len(shown),
                    "index_version": "v1",
                    "latency_ms": 5.0,
                    "user_id": None,
                    "session_id": None,
                    "created_at": at,
                }
                for sid, at, adapter, q, nq, shown in SEARCHES
            ],
        )
    with session_scope(url) as s:
        insert_events(
            s,
            [
                {
                    "event_id": f"e{i}",
                    "search_id": sid,
                    "product_id": pid,
                    "type": kind,
                    "position": pos,
                    "ts": ts,
                }
                for i, (sid, pid, kind, pos, ts) in enumerate(EVENTS)
            ],
        )


@pytest.fixture
def logged(db_url: str) -> str:
    _fill(db_url)
    return db_url


def _figures(
    searches: int, clicked: int, no_result: int, carted: int, bought: int, pos_n: int, pos_sum: int
) -> dict:
    """The expected figures from hand counts (rates as the API defines them)."""
    return {
        "searches": searches,
        "clicked_searches": clicked,
        "no_result_searches": no_result,
        "add_to_cart_searches": carted,
        "purchase_searches": bought,
        "positioned_clicks": pos_n,
        "click_through_rate": clicked / searches if searches else None,
        "no_result_rate": no_result / searches if searches else None,
        "mean_click_position": pos_sum / pos_n if pos_n else None,
        "add_to_cart_rate": carted / searches if searches else None,
        "purchase_rate": bought / searches if searches else None,
    }


def _strip(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def test_figures_match_the_hand_counts(logged: str) -> None:
    out = search_analytics(logged, until=_t(4), days=3).model_dump(mode="json")
    assert out["window"] == {
        "since": "2026-03-01T00:00:00Z",
        "until": "2026-03-04T00:00:00Z",
        "days": 3,
        "adapter": None,
    }
    assert out["exact"] is True
    total = out["totals"]
    assert total == _figures(8, 4, 3, 3, 2, 5, 8)
    assert (total["click_through_rate"], total["no_result_rate"]) == (0.5, 0.375)
    assert (total["add_to_cart_rate"], total["purchase_rate"]) == (0.375, 0.25)
    assert total["mean_click_position"] == 1.6

    assert [d["day"] for d in out["per_day"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    # Mar 1: s1 s2 s3 (s3 at 23:59:59; s2's purchase two days later counts here).
    assert _strip(out["per_day"][0], "day") == _figures(3, 2, 1, 1, 1, 3, 6)
    # Mar 2: s4 (at midnight) s5 s6; s5's click has no position: no mean.
    assert _strip(out["per_day"][1], "day") == _figures(3, 1, 1, 1, 0, 0, 0)
    assert out["per_day"][1]["mean_click_position"] is None
    # Mar 3: s7 (two clicks at 1, both count) s8.
    assert _strip(out["per_day"][2], "day") == _figures(2, 1, 1, 1, 1, 2, 2)

    # Most searches first; a1 and "no adapter" tie at 3 (no adapter first).
    assert [a["adapter"] for a in out["per_adapter"]] == [None, "a1", "a2"]
    assert _strip(out["per_adapter"][0], "adapter") == _figures(3, 1, 2, 1, 0, 0, 0)
    assert _strip(out["per_adapter"][1], "adapter") == _figures(3, 2, 1, 1, 1, 3, 6)
    assert _strip(out["per_adapter"][2], "adapter") == _figures(2, 1, 0, 1, 1, 2, 2)

    assert out["top_queries"] == [
        {"query": "red shoes", "normalized_query": "red shoes", "searches": 4},
        {"query": "blue hat", "normalized_query": "blue hat", "searches": 2},
        {"query": "green sock", "normalized_query": "green sock", "searches": 1},
        {"query": "zebra", "normalized_query": "zebra", "searches": 1},  # tie: alphabetical
    ]
    assert out["top_no_result_queries"] == [
        {"query": "blue hat", "normalized_query": "blue hat", "searches": 2},
        {"query": "zebra", "normalized_query": "zebra", "searches": 1},
    ]


def test_window_boundaries_are_half_open(logged: str) -> None:
    """since is inclusive, until exclusive: s4 (exactly midnight Mar 2) is Mar 2's, s3 (one
    second before) Mar 1's; s0 joins only when the window reaches back to Feb 28."""
    mar2 = search_analytics(logged, since=_t(2), until=_t(3)).model_dump()
    assert mar2["totals"]["searches"] == 3  # s4 s5 s6
    assert mar2["totals"]["no_result_searches"] == 1  # s4
    mar1 = search_analytics(logged, until=_t(2), days=1).model_dump()
    assert mar1["totals"]["searches"] == 3  # s1 s2 s3, not s4
    assert mar1["totals"]["clicked_searches"] == 2
    # Five days to Mar 4: Feb 27 (empty), Feb 28 (s0), Mar 1..3.
    five = search_analytics(logged, until=_t(4), days=5).model_dump(mode="json")
    assert [d["day"] for d in five["per_day"]] == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
        "2026-03-03",
    ]
    assert _strip(five["per_day"][0], "day") == _figures(0, 0, 0, 0, 0, 0, 0)
    assert five["per_day"][0]["click_through_rate"] is None
    assert _strip(five["per_day"][1], "day") == _figures(1, 1, 0, 0, 0, 1, 1)
    assert five["totals"]["searches"] == 9
    assert five["top_queries"][0]["searches"] == 5  # red shoes, with s0
    # Naive datetimes are UTC; a window between two searches is empty, with null rates.
    gap = search_analytics(logged, since=datetime(2026, 3, 3, 9, 30), until=_t(3, 9, 59))
    assert gap.totals.searches == 0 and gap.totals.click_through_rate is None
    assert gap.top_queries == [] and [d.searches for d in gap.per_day] == [0]


def test_adapter_filter_and_top_length(logged: str) -> None:
    a1 = search_analytics(logged, until=_t(4), days=3, adapter="a1").model_dump()
    assert a1["window"]["adapter"] == "a1"
    assert a1["totals"] == _figures(3, 2, 1, 1, 1, 3, 6)  # s1 s2 s4
    assert [a["adapter"] for a in a1["per_adapter"]] == ["a1"]
    assert [(q["normalized_query"], q["searches"]) for q in a1["top_queries"]] == [
        ("red shoes", 2),
        ("blue hat", 1),
    ]
    raw = search_analytics(logged, until=_t(4), days=3, adapter="-").model_dump()
    assert raw["totals"] == _figures(3, 1, 2, 1, 0, 0, 0)  # s3 s5 s8
    assert [a["adapter"] for a in raw["per_adapter"]] == [None]
    assert [q["normalized_query"] for q in raw["top_no_result_queries"]] == ["blue hat", "zebra"]
    nobody = search_analytics(logged, until=_t(4), days=3, adapter="a9").model_dump()
    assert nobody["totals"]["searches"] == 0 and nobody["per_adapter"] == []
    one = search_analytics(logged, until=_t(4), days=3, top=1)
    assert [q.normalized_query for q in one.top_queries] == ["red shoes"]
    assert [q.normalized_query for q in one.top_no_result_queries] == ["blue hat"]


@pytest.mark.parametrize(
    ("since", "until", "adapter"),
    [
        (_t(1), _t(4), False),  # most of the log
        (_t(2), _t(3), False),  # one day of it
        (_t(1), _t(4), True),  # one adapter
        (_t(28, month=2), _t(2), True),
    ],
)
def test_both_plan_choices_give_the_same_counts(
    logged: str, since: datetime, until: datetime, adapter: bool
) -> None:
    """Restricting the event summary to the window's searches is a choice of plan only."""
    w = Window(since, until, only_adapter=adapter, adapter="a1" if adapter else None)
    with session_scope(logged) as s:
        dialect = s.get_bind().dialect.name
        runs = [
            sorted(
                (as_date(day), adapter or "", *counts)
                for day, adapter, *counts in s.execute(
                    summary_statement(dialect, w, restrict_events=r)
                )
            )
            for r in (False, True)
        ]
    assert runs[0] == runs[1]
    assert sum(row[2] for row in runs[0]) > 0  # the window holds searches


@pytest.fixture
def client(db_url: str, tmp_path: Path):
    index = write_title_index(tmp_path / "index", {"p1": "red shoes", "p2": "blue hat"})
    with make_api_client(db_url, index, tmp_path) as c:
        _fill(db_url)
        yield c


def test_endpoint_answers_the_hand_counts_and_refuses_bad_parameters(client: TestClient) -> None:
    params = {"since": "2026-03-01T00:00:00Z", "until": "2026-03-04T00:00:00Z"}
    r = client.get("/admin/analytics", params=params, headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"] == _figures(8, 4, 3, 3, 2, 5, 8)
    assert [d["searches"] for d in body["per_day"]] == [3, 3, 2]
    assert body["top_queries"][0] == {
        "query": "red shoes",
        "normalized_query": "red shoes",
        "searches": 4,
    }
    assert body["query_ms"] >= 0
    by_adapter = client.get(
        "/admin/analytics", params={**params, "adapter": "a2", "top": 1}, headers=KEY
    ).json()
    assert by_adapter["totals"]["searches"] == 2 and len(by_adapter["top_queries"]) == 1

    assert client.get("/admin/analytics", params=params).status_code == 401
    bad_key = {"Authorization": "Bearer nope"}
    assert client.get("/admin/analytics", params=params, headers=bad_key).status_code == 401
    # Every combination the schema allows is served; the answer's window says what counted.
    served = [
        ({"since": "2026-03-04T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, (None, None, 0, 0)),
        ({"since": "2026-03-01T00:00:00Z", "days": 2}, ("2026-03-01", "2026-03-03", 2, 6)),
        ({"since": "2026-03-01T00:00:00Z", "days": 9, "until": "2026-03-02T00:00:00Z"},
         ("2026-03-01", "2026-03-02", 1, 3)),
        ({"since": "2024-01-01T00:00:00Z", "until": "2026-03-03T00:00:00Z"},
         ("2025-03-02", "2026-03-03", 366, 7)),  # s0 of Feb 28 too
        ({"until": "0001-01-02T00:00:00Z"}, ("0001-01-01", "0001-01-02", 1, 0)),
        ({"until": "0001-01-01T00:30:00+01:00"}, ("0001-01-01", "0001-01-01", 0, 0)),
    ]  # fmt: skip
    for params_, (since, until, n_days, searches) in served:
        r = client.get("/admin/analytics", params=params_, headers=KEY)
        assert r.status_code == 200, (params_, r.text)
        body = r.json()
        if since is not None:
            assert body["window"]["since"][:10] == since and body["window"]["until"][:10] == until
        assert body["window"]["days"] == len(body["per_day"]) == n_days, params_
        assert body["totals"]["searches"] == searches, params_
    refused = [
        {"days": 0},
        {"days": 367},
        {"top": 0},
        {"top": 101},
        {"adapter": "no spaces"},
        {"adapter": "-x"},
        {"since": "yesterday"},
    ]
    for bad in refused:
        r = client.get("/admin/analytics", params=bad, headers=KEY)
        assert r.status_code == 422, (bad, r.status_code, r.text)
        assert r.json()["error"]["message"], bad
    # The default window (the last 30 UTC days) holds none of the fixture's 2026-03 searches
    # unless today is within 30 days of them; it answers 30 days either way.
    default = client.get("/admin/analytics", headers=KEY).json()
    assert default["window"]["days"] == 30 and len(default["per_day"]) == 30


def _plan(url: str, stmt) -> str:  # type: ignore[no-untyped-def]
    """The plan the database chooses for `stmt`; PostgreSQL with sequential scans priced out,
    so the plan shows which indexes the statement *can* use whatever the table's size."""
    with session_scope(url) as s:
        dialect = s.get_bind().dialect
        sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if dialect.name == "postgresql":
            s.execute(text("SET LOCAL enable_seqscan = off"))
            return "\n".join(r[0] for r in s.execute(text(f"EXPLAIN {sql}")))
        return "\n".join(str(r[-1]) for r in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))


def test_migration_0004_indexes_serve_the_statements(logged: str) -> None:
    """The indexes exist after the migration and go with its downgrade; the partial index's
    predicate matches the statements' word for word (else no planner could use it)."""
    names = {i["name"] for i in inspect(get_engine(logged)).get_indexes("searches")}
    assert {"ix_searches_adapter_created_at", "ix_searches_no_result"} <= names
    w = Window(_t(1), _t(4))
    assert "ix_searches_no_result" in _plan(
        logged, top_queries_statement(w, 10, no_result_only=True)
    )
    narrow = Window(_t(2), _t(3), only_adapter=True, adapter="a1")
    assert "ix_searches_adapter_created_at" in _plan(
        logged, top_queries_statement(narrow, 10, no_result_only=False)
    )
    downgrade(logged, "0003")
    get_engine.cache_clear()
    left = {i["name"] for i in inspect(get_engine(logged)).get_indexes("searches")}
    assert not left & {"ix_searches_adapter_created_at", "ix_searches_no_result"}
    upgrade(logged, "0004")
