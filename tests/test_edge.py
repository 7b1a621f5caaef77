"""Hostile and careless input at the HTTP edge: every request answered with a documented
status and a message, nothing half-stored; request ids, rate limits, CORS; the admin key."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db.engine import session_scope
from service.db.models import Event, Search
from service.logs import configure_logging
from service.security import WeakAdminKey, check_admin_key, ensure_admin_key
from service.settings import Settings, get_settings
from tests.conftest import make_api_client

KEY = {"Authorization": "Bearer s3cret"}
OSPO = str(Path(sys.executable).with_name("ospo"))


def _client(sqlite_url: str, index_root: Path, tmp_path: Path, **overrides) -> TestClient:
    return make_api_client(
        sqlite_url, index_root, tmp_path, search_log_background=False, **overrides
    )


@pytest.fixture
def client(sqlite_url: str, small_index_root: Path, tmp_path: Path):
    with _client(sqlite_url, small_index_root, tmp_path, max_body_bytes=4096) as c:
        yield c


def _count(url: str, model) -> int:  # type: ignore[no-untyped-def]
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    big = b'{"query": "' + b"a" * 10_000 + b'"}'
    declared = client.post("/v1/search", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"
    # No Content-Length (chunked): cut off once the streamed bytes pass the limit.
    streamed = client.post(
        "/v1/events",
        content=iter([big[:3000], big[3000:]]),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413, streamed.text
    assert _count(client.db_url, Search) == 0  # type: ignore[attr-defined]
    # Admin bodies have their own, larger limit.
    ok = client.post("/admin/catalog", json=[{"id": "m1", "title": "a" * 1500}] * 3, headers=KEY)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"query": "caf\xe9 au lait"}', "UTF-8"),  # invalid UTF-8
        (b"[" * 2000 + b"]" * 2000, ""),  # deeply nested
        (b'{"query": "usb\\u0000hub"}', "U+0000"),  # NUL: PostgreSQL cannot store it
        (b'{"query": "usb \\ud800 hub"}', "query"),  # unpaired surrogate: not UTF-8
        (b'{"query": "usb\\u001bhub"}', "U+001B"),  # escape character
        (b'{"query": "usb hub", "colour": "red"}', "colour"),  # unknown field
        (b'{"query": "   "}', "query"),
    ],
    ids=["utf8", "nested", "nul", "surrogate", "control", "unknown-field", "blank"],
)
def test_malformed_searches_get_422_with_a_message(
    client: TestClient, body: bytes, fragment: str
) -> None:
    r = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]
    assert _count(client.db_url, Search) == 0  # type: ignore[attr-defined]


def test_an_event_with_unstorable_text_is_refused_alone(client: TestClient) -> None:
    sid = client.post("/v1/search", json={"query": "usb hub", "k": 2}).json()["search_id"]
    good = {"event_id": "e1", "search_id": sid, "product_id": "p1", "type": "click"}
    bad = {**good, "event_id": "e2", "product_id": "p\u00001"}
    r = client.post("/v1/events", json=[good, bad])
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["stored", "refused"]
    assert "U+0000" in r.json()["results"][1]["reason"]
    assert _count(client.db_url, Event) == 1  # type: ignore[attr-defined]
    tabs = {**good, "event_id": "e3", "product_id": "p\t1"}  # tab is whitespace: allowed
    assert client.post("/v1/events", json=[good, tabs]).json()["stored"] == 1  # e1: duplicate


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    fresh = client.get("/healthz")
    assert len(fresh.headers["x-request-id"]) == 32
    mine = "4f0a2c9e1b7d4e6f8a9b0c1d2e3f4a5b"
    echoed = client.post("/v1/search", json={"query": "x" * 600}, headers={"X-Request-ID": mine})
    assert echoed.status_code == 422 and echoed.headers["x-request-id"] == mine


def test_log_lines_carry_the_request_id_and_never_the_key(client: TestClient) -> None:
    stream = io.StringIO()
    configure_logging("INFO")
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]

    async def noisy(body: dict) -> dict:  # a handler that logs, as services do on trouble
        logging.getLogger("service.test").warning("handling %d fields", len(body))
        return {}

    client.app.add_api_route("/admin/_noisy", noisy, methods=["POST"])  # type: ignore[attr-defined]
    try:
        r = client.post(
            "/admin/_noisy",
            json={"secret_body": "zebra-7"},
            headers={**KEY, "X-Request-ID": "a" * 32},
        )
        assert r.status_code == 200
        logging.getLogger("service.test").info("after the request")
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert f"[{'a' * 32}] service.test: handling 1 fields" in text
    assert "[-] service.test: after the request" in text  # outside a request: "-"
    assert "s3cret" not in text and "zebra-7" not in text


def test_rate_limit_answers_429_with_retry_after(
    sqlite_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    with _client(
        sqlite_url, small_index_root, tmp_path, rate_limit_search="3/minute", rate_limit_events=""
    ) as c:
        codes = [c.post("/v1/search", json={"query": "usb hub"}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = c.post("/v1/search", json={"query": "usb hub"})
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limited"
        assert c.get("/healthz").status_code == 200  # only the limited endpoints
        metrics = c.get("/metrics").text
        assert 'ospo_rate_limited_total{endpoint="search"}' in metrics


def test_cors_only_for_configured_origins(
    sqlite_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    with _client(
        sqlite_url, small_index_root, tmp_path, cors_origins=["https://shop.example"]
    ) as c:
        preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        ok = c.options("/v1/search", headers=preflight)
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        other = c.options("/v1/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_default_key_never_leaves_loopback(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_admin_key(default, host)
    for host in ("0.0.0.0", "::", "10.1.2.3", "api.internal"):
        with pytest.raises(WeakAdminKey, match="default admin key"):
            check_admin_key(default, host)
    with pytest.raises(WeakAdminKey, match="short"):
        check_admin_key(Settings(data_dir=tmp_path, admin_api_key="hunter2"), "0.0.0.0")
    check_admin_key(Settings(data_dir=tmp_path, admin_api_key="k" * 32), "0.0.0.0")


def test_serve_refuses_a_public_bind_with_the_default_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
    env["OSPO_DATA_DIR"] = str(tmp_path)
    out = subprocess.run(
        [OSPO, "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "default admin key" in out.stderr and "OSPO_ADMIN_API_KEY" in out.stderr


def test_up_generates_one_key_and_keeps_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OSPO_ADMIN_API_KEY", raising=False)
    monkeypatch.setenv("OSPO_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        path = ensure_admin_key(get_settings())
        assert path == tmp_path / "admin.key" and (path.stat().st_mode & 0o777) == 0o600
        first = get_settings().admin_api_key.get_secret_value()
        assert len(first) >= 32 and os.environ["OSPO_ADMIN_API_KEY"] == first
        check_admin_key(get_settings(), "0.0.0.0")  # strong enough to serve publicly
        monkeypatch.delenv("OSPO_ADMIN_API_KEY")
        get_settings.cache_clear()
        ensure_admin_key(get_settings())
        assert get_settings().admin_api_key.get_secret_value() == first  # the same key again
        assert ensure_admin_key(get_settings()) is None  # configured now: nothing to do
    finally:
        get_settings.cache_clear()


def test_events_for_a_search_served_by_an_older_index_version_are_stored(
    client: TestClient,
) -> None:
    """A shopper clicks a result shown before an index rebuild: the search id still names a
    logged search, so the events are stored (labels are keyed by product id, not by version)."""
    from service.db.models import utcnow
    from service.repositories.searches import add_searches

    with session_scope(client.db_url) as s:  # type: ignore[attr-defined]
        add_searches(s, [{
            "id": "old-version-search", "query": "usb hub", "normalized_query": "usb hub",
            "rewrite": "usb hub", "rewrite_source": "none", "adapter": None,
            "prompt_version": None, "k": 1, "product_ids": ["p-gone"], "scores": [0.5],
            "index_version": "20200101T000000-00000000", "latency_ms": 1.0, "user_id": None,
            "session_id": None, "created_at": utcnow(),
        }])  # fmt: skip
    event = {"event_id": "e-old", "search_id": "old-version-search", "product_id": "p-gone",
             "type": "click"}  # fmt: skip
    r = client.post("/v1/events", json=[event])
    assert r.status_code == 200 and r.json()["stored"] == 1
