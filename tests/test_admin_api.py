"""Admin API: every operation answers a documented model; index rebuilds follow the settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import make_api_client

KEY = {"Authorization": "Bearer s3cret"}


def test_every_admin_operation_documents_its_answer(tmp_path: Path) -> None:
    """OpenAPI names a response model for each admin operation's success (no bare dicts), and
    documents the error statuses the operation can answer with the error body."""
    spec = create_app(Settings(data_dir=tmp_path, policy_backend="none")).openapi()
    checked = 0
    for path, ops in spec["paths"].items():
        if not path.startswith("/admin"):
            continue
        for method, op in ops.items():
            ok = [code for code in op["responses"] if code.startswith("2")]
            assert ok, f"{method} {path} documents no success"
            for code in ok:
                if code == "204":
                    assert "content" not in op["responses"][code], f"{method} {path}: 204 body"
                    continue
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                named = schema.get("$ref") or schema.get("items", {}).get("$ref")
                assert named, f"{method} {path} {code} answers an unnamed schema: {schema}"
            assert "401" in op["responses"], f"{method} {path}: the key check is undocumented"
            checked += 1
    # adapters ×3, rewrites, train, runs ×2, catalog, index ×2, explain, rules ×4,
    # comparisons ×2, analytics
    assert checked == 18


@pytest.fixture
def hnsw_client(sqlite_url: str, small_index_root: Path, tmp_path: Path):
    with make_api_client(sqlite_url, small_index_root, tmp_path, index_type="hnsw") as client:
        yield client


def _wait_rebuilt(client: TestClient) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get("/admin/index", headers=KEY).json()
        if state["rebuild"]["status"] in ("done", "failed"):
            return state
        time.sleep(0.2)
    raise TimeoutError("index rebuild did not finish")


def test_index_rebuild_follows_the_configured_kind(hnsw_client: TestClient) -> None:
    """No `kind` in the request: OSPO_INDEX_TYPE decides; a request's kind wins; the new
    version serves searches at once."""
    products = [
        {"id": f"m{i}", "title": f"{colour} ceramic coffee mug"}
        for i, colour in enumerate(["red", "blue", "green", "black"])
    ]
    assert hnsw_client.post("/admin/catalog", json=products, headers=KEY).json() == {"upserted": 4}
    before = hnsw_client.get("/admin/index", headers=KEY).json()["serving"]["version"]

    started = hnsw_client.post("/admin/index/rebuild", headers=KEY)
    assert started.status_code == 202 and started.json()["kind"] == "hnsw"
    state = _wait_rebuilt(hnsw_client)
    assert state["rebuild"]["status"] == "done", state
    assert state["serving"]["kind"] == "hnsw" and state["serving"]["count"] == 4
    assert state["serving"]["version"] != before
    hit = hnsw_client.post("/v1/search", json={"query": "green mug", "k": 1}).json()
    assert hit["results"][0]["product_id"] == "m2"

    flat = hnsw_client.post("/admin/index/rebuild", json={"kind": "flat"}, headers=KEY)
    assert flat.status_code == 202 and flat.json()["kind"] == "flat"
    state = _wait_rebuilt(hnsw_client)
    assert state["rebuild"]["status"] == "done" and state["serving"]["kind"] == "flat"
    bad = hnsw_client.post("/admin/index/rebuild", json={"kind": "ivf"}, headers=KEY)
    assert bad.status_code == 422 and "kind" in bad.json()["error"]["message"]
