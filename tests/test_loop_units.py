"""Pieces of the online loop on both databases: interaction labels, the training lease,
the adapter pointer, and the admin API's authentication and validation."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.adapters.registry import register_adapter
from service.db.engine import session_scope
from service.db.models import Event, Search, utcnow
from service.errors import Conflict, InvalidInput
from service.records import LabelRecord
from service.repositories.adapters import active_adapter, previous_adapter, set_active
from service.repositories.labels import count_labels, replace_labels, upsert_labels
from service.repositories.runs import (
    acquire_lease,
    create_run,
    expire_stale_runs,
    get_run,
    renew_lease,
)
from trainer.online.interaction_labels import EventWeights, mine_labels, refresh_interaction_labels


def _search(s, query: str, pids: list[str]) -> str:
    sid = str(uuid.uuid4())
    s.add(
        Search(
            id=sid,
            query=query,
            normalized_query=query.lower(),
            rewrite=query,
            rewrite_source="none",
            k=len(pids),
            product_ids=pids,
            scores=[0.0] * len(pids),
            latency_ms=1.0,
        )
    )
    s.flush()
    return sid


def _event(s, sid: str, pid: str, etype: str) -> None:
    s.add(Event(event_id=str(uuid.uuid4()), search_id=sid, product_id=pid, type=etype, ts=utcnow()))


def test_interaction_labels(db_url: str) -> None:
    with session_scope(db_url) as s:
        for i in range(4):
            sid = _search(s, "Red Mug", ["a", "b", "c"])
            _event(s, sid, "a", "impression")
            if i < 2:
                _event(s, sid, "a", "click")
                _event(s, sid, "a", "purchase")  # strongest event of the search counts
            if i == 0:
                _event(s, sid, "b", "click")  # one engaged search: below min support
            _event(s, sid, "c", "add_to_cart")
    with session_scope(db_url) as s:
        labels = {lab.product_id: lab for lab in mine_labels(s, EventWeights(), min_support=2)}
    assert set(labels) == {"a", "c"}
    assert labels["a"].gain == pytest.approx(2 * 1.0 / 4)
    assert labels["c"].gain == pytest.approx(0.6)
    assert labels["a"].source == "interactions" and labels["a"].query == "Red Mug"
    with session_scope(db_url) as s:
        stale = LabelRecord("Red Mug", "gone", 1.0, "interactions")
        upsert_labels(s, [stale, LabelRecord("Red Mug", "z", 1.0, "chorus")])
    with session_scope(db_url) as s:
        assert refresh_interaction_labels(s, EventWeights(), 1) == 3
    with session_scope(db_url) as s:
        assert refresh_interaction_labels(s, EventWeights(), 1) == 3
    with session_scope(db_url) as s:  # the stale label is replaced; the dataset judgment stays
        assert count_labels(s) == 3 + 1


def test_replace_labels_keeps_to_its_source(db_url: str) -> None:
    with session_scope(db_url) as s, pytest.raises(ValueError, match="another source"):
        replace_labels(s, "interactions", [LabelRecord("q", "p", 1.0, "chorus")])


def test_training_lease(db_url: str) -> None:
    ttl = timedelta(seconds=60)
    with session_scope(db_url) as s:
        r1 = create_run(s, "ospo", {}).id
        r2 = create_run(s, "ospo", {}).id
    with session_scope(db_url) as s:
        assert acquire_lease(s, r1, "w1", ttl)
    with session_scope(db_url) as s:
        assert not acquire_lease(s, r1, "w2", ttl)  # a redelivery elsewhere must not train
        assert not acquire_lease(s, r2, "w2", ttl)  # nor may a second run
        assert acquire_lease(s, r1, "w1", ttl)  # the holder may re-take it
        assert renew_lease(s, r1, "w1", ttl) and not renew_lease(s, r1, "w2", ttl)
    with session_scope(db_url) as s:
        assert expire_stale_runs(s, utcnow() + timedelta(seconds=61)) == 1
    with session_scope(db_url) as s:
        run = get_run(s, r1)
        assert run.status == "failed" and "lease expired" in run.error
        assert acquire_lease(s, r2, "w2", ttl)
    with session_scope(db_url) as s:
        r3 = create_run(s, "ospo", {}).id
    with session_scope(db_url) as s:
        assert expire_stale_runs(s, utcnow() + timedelta(hours=3)) == 2  # r2 lost, r3 orphaned
        assert get_run(s, r3).error == "never picked up by a worker"


def _fake_adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / f"src-{name}"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(name.encode())
    return d


def test_registry_and_pointer(db_url: str, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    a = register_adapter(db_url, adapters, "a1", _fake_adapter(tmp_path, "a1"), "base")
    assert (adapters / "a1" / "CHECKSUM").read_text().strip() == a.checksum
    register_adapter(db_url, adapters, "a2", _fake_adapter(tmp_path, "a2"), "base", parent="a1")
    with pytest.raises(Conflict):
        register_adapter(db_url, adapters, "a1", _fake_adapter(tmp_path, "x"), "base")
    with pytest.raises(InvalidInput):
        register_adapter(db_url, adapters, "../evil", _fake_adapter(tmp_path, "y"), "base")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="not a PEFT"):
        register_adapter(db_url, adapters, "a3", empty, "base")
    with session_scope(db_url) as s:
        assert set_active(s, "a1") is None
    with session_scope(db_url) as s:
        assert set_active(s, "a2") == "a1"
    with session_scope(db_url) as s:
        assert active_adapter(s).name == "a2"
        assert previous_adapter(s).name == "a1"


@pytest.fixture
def admin_client(api_client: TestClient) -> TestClient:
    return api_client


def test_admin_requires_key(admin_client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = admin_client.get("/admin/adapters", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    ok = admin_client.get("/admin/adapters", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json() == []


def test_admin_validation_and_catalog(admin_client: TestClient) -> None:
    h = {"Authorization": "Bearer s3cret"}
    r = admin_client.post("/admin/train", json={"algorithm": "ppo"}, headers=h)
    assert r.status_code == 422 and "algorithm" in r.json()["error"]["message"]
    r = admin_client.get("/admin/runs/nope", headers=h)
    assert r.status_code == 404
    r = admin_client.post("/admin/adapters/rollback", headers=h)
    assert r.status_code == 409 and "no policy backend" in r.json()["error"]["message"]
    r = admin_client.post("/admin/catalog", json=[{"id": "z1", "title": "Zebra mug"}], headers=h)
    assert r.status_code == 200 and r.json() == {"upserted": 1}
    r = admin_client.post("/admin/catalog", json=[{"id": "", "title": "x"}], headers=h)
    assert r.status_code == 422
