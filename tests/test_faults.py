"""Faults at the storage layer, short versions of `bench/reliability.py`'s scenarios:
a full disk under an index rebuild and an adapter registration, a PostgreSQL restart and a
Redis restart while events and searches flow, and a `kill -9` of the API with searches it
answered not yet committed. Each checks the promise in docs/promises.md ("What
we promise"): nothing acknowledged is lost, nothing half-written is registered, serving goes on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.adapters.registry import register_adapter
from service.api.app import create_app
from service.db.engine import session_scope
from service.db.models import Adapter, Event, Search
from service.processes import GroupChild
from service.settings import Settings
from tests.conftest import make_api_client

KEY = {"Authorization": "Bearer s3cret"}


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted at `path` (root only; skipped with the reason else)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_an_index_rebuild_keeps_the_old_version_serving(
    sqlite_url: str, small_index_root: Path, tmp_path: Path, esci_records
) -> None:
    room = _tree_bytes(small_index_root) + 300_000  # the serving version, not a second one
    with small_disk(tmp_path / "var", room) as data_dir:
        shutil.copytree(small_index_root, data_dir / "indexes")
        settings = Settings(data_dir=data_dir, database_url=sqlite_url, admin_api_key="s3cret",
                            policy_backend="none")  # fmt: skip
        with TestClient(create_app(settings)) as client:
            before = client.get("/admin/index", headers=KEY).json()["serving"]["version"]
            products = [
                {"id": p.id, "title": p.title, "description": p.description}
                for p, _ in esci_records
                if p is not None
            ]
            assert client.post("/admin/catalog", json=products, headers=KEY).status_code == 200
            assert client.post("/admin/index/rebuild", headers=KEY).status_code == 202
            deadline = time.monotonic() + 120
            while (state := client.get("/admin/index", headers=KEY).json())["rebuild"][
                "status"
            ] == "building":
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
            assert state["rebuild"]["status"] == "failed", state
            assert "No space left" in state["rebuild"]["error"]
            assert state["serving"]["version"] == before
            search = client.post("/v1/search", json={"query": "usb hub", "k": 3})
            assert search.status_code == 200 and search.json()["index_version"] == before
        leftovers = sorted(p.name for p in (data_dir / "indexes").iterdir())
        assert leftovers == sorted(["CURRENT", before]), leftovers


def test_disk_full_while_registering_an_adapter_registers_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "trained"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"r": 8}')
    (source / "adapter_model.safetensors").write_bytes(os.urandom(400_000))
    with small_disk(tmp_path / "adapters", 200_000) as adapters_dir:
        with pytest.raises(OSError):
            register_adapter(sqlite_url, adapters_dir, "full-disk", source, "base-model")
        assert list(adapters_dir.iterdir()) == []
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Adapter)) == 0


def _restart_postgres() -> None:
    clusters = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if not clusters or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster this test may restart")
    restarted = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "restart"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if restarted.returncode != 0:
        pytest.skip(f"cannot restart PostgreSQL here: {restarted.stderr.strip()}")


@pytest.mark.postgres
def test_postgres_restart_acknowledges_only_what_it_stores(
    pg_base_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    """Events sent while PostgreSQL restarts: each batch is acknowledged (200) and stored, or
    refused with 503 and not stored; searches keep answering and their log rows land once the
    database is back."""
    from service.db.migrate import upgrade
    from tests.conftest import _drop_pg_schema, _fresh_pg_schema

    url, schema = _fresh_pg_schema(pg_base_url)
    upgrade(url)
    acked, refused, searched, errors = 0, 0, [], []
    stop = threading.Event()
    try:
        with make_api_client(
            url, small_index_root, tmp_path, rate_limit_search="", rate_limit_events=""
        ) as client:
            sid = client.post("/v1/search", json={"query": "usb hub"}).json()["search_id"]

            def traffic() -> None:
                nonlocal acked, refused
                while not stop.is_set():
                    s = client.post("/v1/search", json={"query": "phone case", "k": 3})
                    if s.status_code == 200:
                        searched.append(s.json()["search_id"])
                    else:
                        errors.append(f"search {s.status_code}")
                    batch = [{"event_id": str(uuid.uuid4()), "search_id": sid,
                              "product_id": "p1", "type": "click"} for _ in range(3)]  # fmt: skip
                    r = client.post("/v1/events", json=batch)
                    if r.status_code == 200:
                        acked += r.json()["stored"]
                    elif r.status_code == 503:
                        refused += 1
                        assert r.headers["retry-after"] == "1"
                    else:
                        errors.append(f"events {r.status_code}: {r.text[:200]}")

            worker = threading.Thread(target=traffic)
            worker.start()
            time.sleep(1.0)
            _restart_postgres()
            time.sleep(3.0)
            stop.set()
            worker.join(60)
            assert not errors, errors[:5]
            assert client.app.state.search_log.wait_written(searched, timeout=60)  # type: ignore[attr-defined]
        with session_scope(url) as s:
            stored = s.scalar(select(func.count()).select_from(Event))
        assert stored == acked and acked > 0
        print(f"acknowledged {acked} events = stored {stored}; {refused} batches refused (503)")
    finally:
        _drop_pg_schema(pg_base_url, schema)


def _until_redis_answers(redis: GroupChild, port: int) -> None:
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != (
        b"PONG\n"
    ):
        assert time.monotonic() < deadline and redis.alive(), redis.tail()
        time.sleep(0.1)


def test_redis_restart_fails_no_search_and_the_broker_reconnects(
    sqlite_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    """A private Redis (rate-limit counters, Celery broker) killed and started again under
    traffic: no search fails (the limiter lets requests through while its store is down), and
    a training run is queued through the broker afterwards."""
    from service.policy.server import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary to run a private Redis")
    port = free_port()
    redis = GroupChild(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(os.environ), tmp_path / "redis.log",
    )  # fmt: skip
    _until_redis_answers(redis, port)
    statuses: list[int] = []
    stop = threading.Event()
    try:
        with make_api_client(
            sqlite_url, small_index_root, tmp_path,
            redis_url=f"redis://127.0.0.1:{port}/0", rate_limit_search="100000/second",
        ) as client:  # fmt: skip

            def traffic() -> None:
                while not stop.is_set():
                    r = client.post("/v1/search", json={"query": "usb hub", "k": 3})
                    statuses.append(r.status_code)

            worker = threading.Thread(target=traffic)
            worker.start()
            time.sleep(1.0)
            redis.kill()
            redis.proc.wait(10)
            time.sleep(2.0)
            redis.start()
            _until_redis_answers(redis, port)
            time.sleep(1.0)
            stop.set()
            worker.join(60)
            queued = client.post("/admin/train", headers=KEY)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert queued.status_code == 202, queued.text
        print(f"{len(statuses)} searches across the Redis restart, all 200")
    finally:
        redis.stop()


def test_kill_9_of_the_api_loses_no_answered_search(small_index_root: Path, tmp_path: Path) -> None:
    """`kill -9` of a real `ospo serve` right after it answered N searches whose log rows it
    could not commit yet (another connection holds SQLite's write lock, as a slow disk or a
    busy database would): none is in the database when it dies, all N are once the API has
    started again (its start-up replays the journal the dead process left)."""
    import sqlite3

    import httpx

    from service.db.migrate import upgrade
    from service.policy.server import free_port
    from tests.processes import OSPO, Child, wait_http

    data = tmp_path / "var"
    shutil.copytree(small_index_root, data / "indexes")
    db = data / "ospo.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OSPO_")},
        "OSPO_DATA_DIR": str(data), "OSPO_POLICY_BACKEND": "none",
        "OSPO_RATE_LIMIT_SEARCH": "", "OSPO_RATE_LIMIT_EVENTS": "",
    }  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    api = Child([OSPO, "serve", "--port", str(port)], env, tmp_path / "api.log")
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        wait_http(f"{base}/healthz", api)
        lock.execute("BEGIN IMMEDIATE")  # the search log's commits now wait
        answered = [
            httpx.post(f"{base}/v1/search", json={"query": q, "k": 3}, timeout=30).json()[
                "search_id"
            ]
            for q in ("usb hub", "phone case", "wireless earbuds", "desk lamp", "hdmi") * 4
        ]
        api.kill()  # SIGKILL: no shutdown, no flush
        api.proc.wait(30)
        lock.rollback()
        with session_scope(url) as s:
            assert s.scalar(select(func.count()).select_from(Search)) == 0  # all were buffered
        left = set((data / "search-log").glob("*.wal"))
        assert left  # the dead process's journal
        api = Child([OSPO, "serve", "--port", str(port)], env, tmp_path / "api2.log")
        wait_http(f"{base}/healthz", api)
        with session_scope(url) as s:
            stored = set(s.scalars(select(Search.id)))
        assert stored == set(answered) and len(answered) == 20
        assert not left & set((data / "search-log").glob("*.wal"))  # replayed, then deleted
    finally:
        lock.close()
        api.stop()
