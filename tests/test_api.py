"""The HTTP API end to end over a real index and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.db.engine import session_scope
from service.db.models import Event, Search
from service.settings import Settings


@pytest.fixture
def client(api_client: TestClient) -> TestClient:
    return api_client


def _search(client: TestClient, query: str = "wireless earbuds", k: int = 5) -> dict:
    r = client.post("/v1/search", json={"query": query, "k": k, "user_id": "u1"})
    assert r.status_code == 200, r.text
    return r.json()


def test_search_returns_k_real_products_and_is_logged(client: TestClient) -> None:
    body = _search(client, "  6 dining chairs ", 7)
    assert body["query"] == "6 dining chairs"
    assert len(body["results"]) == 7
    assert "chair" in body["results"][0]["title"].lower()
    assert body["rewrite"] == "6 dining chairs" and body["rewrite_source"] == "none"
    assert body["adapter"] is None and body["expansion"] is None
    assert body["retrieval_mode"] == "hybrid"  # the default deployment mode
    assert set(body["timings"]) >= {"rewrite_ms", "retrieve_ms", "total_ms"}
    assert set(body["timings"]) >= {"dense_ms", "lexical_ms", "fusion_ms"}
    # logged off the request's path: the row lands right after the answer
    assert client.app.state.search_log.wait_written([body["search_id"]], timeout=10)
    with session_scope(client.db_url) as s:  # type: ignore[attr-defined]
        row = s.get(Search, body["search_id"])
        assert row.normalized_query == "6 dining chairs"
        assert row.product_ids == [r["product_id"] for r in body["results"]]
        assert row.user_id == "u1" and row.k == 7


def test_retrieval_mode_per_request(client: TestClient) -> None:
    bodies = {}
    for mode in ("dense", "lexical", "hybrid"):
        r = client.post("/v1/search", json={"query": "dining chairs", "k": 10, "mode": mode})
        assert r.status_code == 200, r.text
        bodies[mode] = r.json()
        assert bodies[mode]["retrieval_mode"] == mode
    assert "lexical_ms" not in bodies["dense"]["timings"]
    assert "dense_ms" not in bodies["lexical"]["timings"]
    ids = {m: [x["product_id"] for x in b["results"]] for m, b in bodies.items()}
    assert ids["dense"] != ids["lexical"]
    r = client.post("/v1/search", json={"query": "mug", "mode": "semantic"})
    assert r.status_code == 422 and "mode" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"query": "   "}, "query"),
        ({"query": "x" * 513}, "query"),
        ({"query": "mug", "k": 0}, "k"),
        ({"query": "mug", "k": 101}, "k"),
        ({"k": 3}, "query"),
        ({"query": "mug", "unknown": 1}, "unknown"),
    ],
)
def test_search_rejects_bad_input(client: TestClient, payload: dict, fragment: str) -> None:
    r = client.post("/v1/search", json=payload)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and fragment in err["message"]


def _events(search_id: str, n: int, prefix: str | None = None) -> list[dict]:
    prefix = prefix or uuid.uuid4().hex
    types = ["impression", "click", "add_to_cart", "purchase"]
    return [
        {
            "event_id": f"{prefix}-{i}",
            "search_id": search_id,
            "product_id": f"p{i}",
            "type": types[i % 4],
            "ts": "2026-11-27T10:00:00Z",
        }
        for i in range(n)
    ]


def _count_events(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Event))


def _counts(answer: dict) -> dict:
    return {k: answer[k] for k in ("received", "stored", "duplicates", "refused")}


def test_events_are_idempotent(client: TestClient) -> None:
    sid = _search(client)["search_id"]
    batch = _events(sid, 6)
    r1 = client.post("/v1/events", json=batch)
    assert r1.status_code == 200
    assert _counts(r1.json()) == {"received": 6, "stored": 6, "duplicates": 0, "refused": 0}
    r2 = client.post("/v1/events", json=batch)
    assert _counts(r2.json()) == {"received": 6, "stored": 0, "duplicates": 6, "refused": 0}
    r3 = client.post("/v1/events", json=batch[:2] + _events(sid, 1, "new") + batch[:1])
    assert _counts(r3.json()) == {"received": 4, "stored": 1, "duplicates": 3, "refused": 0}
    assert [r["status"] for r in r3.json()["results"]] == [
        "duplicate", "duplicate", "stored", "duplicate",
    ]  # fmt: skip
    assert _count_events(client.db_url) == 7  # type: ignore[attr-defined]


def test_one_bad_event_never_costs_the_batch(client: TestClient) -> None:
    """An event naming a search the log does not know is stored (marked); an invalid one is
    refused alone with its reason; every other event of the batch is stored."""
    sid = _search(client)["search_id"]
    good = _events(sid, 2)
    lost = _events("no-such-search", 1)
    bad_type = {**_events(sid, 1)[0], "type": "like"}
    r = client.post("/v1/events", json=[*good, *lost, bad_type, {"not": "an event"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert _counts(body) == {"received": 5, "stored": 3, "duplicates": 0, "refused": 2}
    assert body["unknown_search"] == 1
    results = body["results"]
    assert [x["status"] for x in results] == ["stored", "stored", "stored", "refused", "refused"]
    assert [x["search_known"] for x in results[:3]] == [True, True, False]
    assert results[3]["event_id"] == bad_type["event_id"] and "type" in results[3]["reason"]
    assert results[4]["event_id"] is None and "event_id" in results[4]["reason"]
    with session_scope(client.db_url) as s:  # type: ignore[attr-defined]
        known = dict(s.execute(select(Event.event_id, Event.search_known)).all())
    assert known == {good[0]["event_id"]: True, good[1]["event_id"]: True,
                     lost[0]["event_id"]: False}  # fmt: skip


def test_events_refuse_what_is_not_a_batch(client: TestClient) -> None:
    sid = _search(client)["search_id"]
    r = client.post("/v1/events", json=_events(sid, 1001))
    assert r.status_code == 422 and "at most 1000" in r.json()["error"]["message"]
    r = client.post("/v1/events", json=[])
    assert r.status_code == 422
    r = client.post("/v1/events", json=["not an object"])
    assert r.status_code == 422
    assert _count_events(client.db_url) == 0  # type: ignore[attr-defined]


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["index"]["ok"] is True
    _search(client)
    metrics = client.get("/metrics").text
    assert "ospo_searches_total" in metrics and "ospo_index_products 392.0" in metrics
    assert "ospo_rewrite_hit_ratio" in metrics and "ospo_search_log_buffered" in metrics
    # no policy backend: nothing to promote and no rewrite store to show, said plainly
    auth = {"Authorization": "Bearer s3cret"}
    for method, path in (("POST", "/admin/adapters/x/promote"), ("GET", "/admin/rewrites")):
        r = client.request(method, path, headers=auth)
        assert r.status_code == 409 and "OSPO_POLICY_BACKEND=none" in r.json()["error"]["message"]


def test_not_ready_without_index(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "empty", database_url=db_url, policy_backend="none")
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["index"]["ok"] is False
        r = c.post("/v1/search", json={"query": "mug"})
        assert r.status_code == 503 and "ospo index build" in r.json()["error"]["message"]
        assert c.get("/nope").json()["error"]["code"] == "not_found"
