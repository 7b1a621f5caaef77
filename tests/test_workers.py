"""Fail fast on a missing worker: a request that would wait on a worker answers 503 with
Retry-After at once when no live worker consumes its queue, and waits (504 at worst) when one
does. A real `ospo worker` announces its queues while it runs and withdraws them when it stops.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.db.migrate import upgrade
from service.queue import DEFAULT_QUEUE, SERVING_QUEUE
from service.workers import Heartbeat, live_queues
from tests.conftest import make_api_client
from tests.processes import OSPO, Child, wait_until

KEY = {"Authorization": "Bearer s3cret"}


def test_heartbeats_name_the_live_queues(db_url: str) -> None:
    assert live_queues(db_url) == set()
    training = Heartbeat(db_url, "host:1", [DEFAULT_QUEUE])
    serving = Heartbeat(db_url, "host:2", [SERVING_QUEUE])
    training.start()
    serving.start()
    assert live_queues(db_url) == {DEFAULT_QUEUE, SERVING_QUEUE}
    training.stop()
    assert live_queues(db_url) == {SERVING_QUEUE}
    serving.stop()


def test_explain_answers_503_without_a_worker_and_waits_with_one(
    sqlite_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    with make_api_client(sqlite_url, small_index_root, tmp_path, worker_timeout_s=1.0) as client:
        r = client.get("/admin/explain", params={"query": "usb hub"}, headers=KEY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker"
        assert int(r.headers["Retry-After"]) > 0
        assert "ospo worker" in r.json()["error"]["message"]
        # A worker that beats but does not answer (here: nothing consumes the broker): the
        # request is sent and waits its worker_timeout_s, then 504.
        beat = Heartbeat(sqlite_url, "silent:1", [DEFAULT_QUEUE])
        beat.start()
        try:
            client.app.state.workers._seen = None  # type: ignore[attr-defined] # skip the cache
            r = client.get("/admin/explain", params={"query": "usb hub"}, headers=KEY)
            assert r.status_code == 504 and r.json()["error"]["code"] == "worker_timeout"
        finally:
            beat.stop()


def test_a_real_worker_announces_its_queues_until_it_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ospo.db'}"
    upgrade(url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OSPO_")},
        "OSPO_DATA_DIR": str(tmp_path),
        "OSPO_POLICY_BACKEND": "none",
    }
    worker = Child([OSPO, "worker", "--queues", "celery,serving"], env, tmp_path / "worker.log")
    try:
        wait_until(lambda: live_queues(url) == {DEFAULT_QUEUE, SERVING_QUEUE}, 180, what="beat")
    finally:
        worker.stop()
    assert live_queues(url) == set()  # withdrawn on a clean stop (a kill: stale in 10 s)
