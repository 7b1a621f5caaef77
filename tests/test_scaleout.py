"""Scale-out on one machine: two API processes and two Celery workers sharing one PostgreSQL
schema and one private Redis (broker, rate limits, rewrite store), as two replicas of the
production compose file would.

- An adapter promoted through API process A is served by A and B within the adapter poll
  interval (each process's watcher reads the active pointer from the database).
- An index rebuild through A reaches B: B's searches report the new index version and find
  the product added through A (every process watches the shared index folder's CURRENT).
- A training run triggered through A and B at the same moment is recorded once (the other
  request gets 409 naming it) and trained by exactly one of the two listening workers.

The policy is the in-process SmolLM2 (`policy_backend=local`): promotion is observable without
vLLM. The waits below are bounded polls, not speed assertions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service.adapters.registry import register_adapter
from service.catalog.formats import parse_esci_products
from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import TrainingRun
from service.domain import RunStatus
from service.policy.server import free_port
from service.processes import GroupChild
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products
from service.repositories.runs import create_run, live_run
from service.retrieval.build import build_index_from_db
from service.retrieval.embedder import get_embedder
from tests.conftest import DATA, PG_URL, _drop_pg_schema, _fresh_pg_schema, _pg_error
from tests.processes import OSPO, Child, wait_http, wait_until

KEY = {"Authorization": "Bearer scaleout-admin-key"}
ADAPTER_POLL_S = 0.5  # OSPO_ADAPTER_POLL_S of the stack: the documented swap time
INDEX_POLL_S = 5.0  # service.api.app.INDEX_POLL_S: how often a process looks at CURRENT
# Slack on top of a poll interval: on a 2-core machine shared with other tests a poll can be
# delayed by seconds of CPU starvation (a bound against hanging, not a speed requirement).
MARGIN_S = 60.0
# ESCI queries labelled for training (the first ones of the sample; their hashed split puts 3
# in training and 3 in validation).
LABELLED_QUERIES = 6
TRAIN_TASK_RECEIVED = re.compile(r"Task ospo\.train_update\[([0-9a-f-]+)\] received")


def _private_redis(tmp: Path) -> tuple[GroupChild, str]:
    """A Redis server of this test alone (its broker queues and keys touch no other test)."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary to run a private Redis")
    port = free_port()
    server = GroupChild(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(os.environ),
        tmp / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            assert server.alive(), server.tail()
            return False

    wait_until(answers, 30, 0.1, "private Redis to answer")
    return server, url


@pytest.fixture(scope="module")
def stack(
    policy_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict]:
    if err := _pg_error():
        pytest.skip(err)
    root = tmp_path_factory.mktemp("scaleout")
    redis_server, redis_url = _private_redis(root)
    db_url, schema = _fresh_pg_schema(PG_URL)
    children: list[Child] = []
    try:
        # One data folder for all four processes: in production it is the shared volume
        # holding index versions (with CURRENT) and the adapter registry.
        data_dir = root / "var"
        upgrade(db_url)
        # The products and judgements of a few ESCI queries: small enough that a rebuild and
        # the warm start of a training (which samples every training query) stay short.
        rows = list(parse_esci_products(DATA / "esci" / "sample_2c_full_data.csv"))
        queries = list(dict.fromkeys(lab.query for _, lab in rows if lab))[:LABELLED_QUERIES]
        rows = [(p, lab) for p, lab in rows if lab and lab.query in queries]
        with session_scope(db_url) as s:
            upsert_products(s, [p for p, _ in rows if p])
            upsert_labels(s, [lab for _, lab in rows])
        build_index_from_db(db_url, data_dir / "indexes", get_embedder(), "flat")
        env = {
            "OSPO_DATA_DIR": str(data_dir),
            "OSPO_DATABASE_URL": db_url,
            "OSPO_REDIS_URL": redis_url,
            "OSPO_ADMIN_API_KEY": KEY["Authorization"].removeprefix("Bearer "),
            "OSPO_POLICY_BACKEND": "local",
            "OSPO_POLICY_MODEL": str(policy_model_dir),
            "OSPO_ADAPTER_POLL_S": str(ADAPTER_POLL_S),
            # A miss asks the in-process policy and waits for it, so a search names the adapter
            # that generated its rewrite in *this* process.
            "OSPO_REWRITE_MISSES": "background",
            "OSPO_REWRITE_BUDGET_MS": "60000",
            # The e2e test's tiny budget; a gate margin no candidate can pass, so the trained
            # adapter is rejected and the active pointer stays the promotion test's business.
            "OSPO_TRAIN_OVERRIDES": json.dumps(
                {"steps": 2, "group_size": 2, "prompts_per_step": 1, "rs_samples": 2}
            ),
            "OSPO_TRAIN_MAX_VAL_QUERIES": "4",
            "OSPO_GATE_MARGIN": "1.0",
            "OSPO_TRAIN_LEASE_TTL_S": "30",
            "OSPO_LABEL_MIN_SUPPORT": "1",
        }
        ports = {"a": free_port(), "b": free_port()}
        for name, port in ports.items():
            children.append(
                Child([OSPO, "serve", "--port", str(port)], env, root / f"api-{name}.log")
            )
        workers = [Child([OSPO, "worker"], env, root / f"worker-{i}.log") for i in (1, 2)]
        children += workers
        for name, port in ports.items():
            wait_http(f"http://127.0.0.1:{port}/readyz", children[list(ports).index(name)], 300)
        for w in workers:
            wait_until(
                lambda w=w: (w.alive() or pytest.fail(w.tail())) and " ready." in w.log.read_text(),
                300,
                what=f"worker {w.log.name} to listen",
            )
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{ports['a']}", timeout=180) as a,
            httpx.Client(base_url=f"http://127.0.0.1:{ports['b']}", timeout=180) as b,
        ):
            yield {"a": a, "b": b, "db_url": db_url, "data_dir": data_dir, "workers": workers,
                   "policy_model_dir": policy_model_dir}  # fmt: skip
    finally:
        for child in reversed(children):
            child.stop()
        redis_server.stop()
        _drop_pg_schema(PG_URL, schema)


def _search(client: httpx.Client, query: str) -> dict:
    r = client.post("/v1/search", json={"query": query, "k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def test_an_index_rebuild_through_a_reaches_b(stack: dict) -> None:
    a, b = stack["a"], stack["b"]
    before = b.get("/admin/index", headers=KEY).json()["serving"]["version"]
    assert _search(b, "zorblax teapot")["index_version"] == before
    product = {
        "id": "scaleout-teapot",
        "title": "Zorblax cast iron teapot with bamboo handle",
        "brand": "Zorblax",
        "description": "A 1.2 litre cast iron teapot.",
    }
    assert a.post("/admin/catalog", json=[product], headers=KEY).json()["upserted"] == 1
    assert a.post("/admin/index/rebuild", headers=KEY).status_code == 202
    done = wait_until(
        lambda: (
            (st := a.get("/admin/index", headers=KEY).json()["rebuild"])["status"] != "building"
            and st
        ),
        300,
        what="the rebuild on A",
    )
    assert done["status"] == "done", done
    version = done["version"]
    assert version != before
    # B never saw the rebuild request: it finds the new CURRENT in the shared folder.
    found = wait_until(
        lambda: (s := _search(b, "zorblax teapot"))["index_version"] == version and s,
        INDEX_POLL_S + MARGIN_S,
        what="B to serve the rebuilt index",
    )
    assert found["results"][0]["product_id"] == "scaleout-teapot", found["results"]
    assert b.get("/admin/index", headers=KEY).json()["serving"]["version"] == version
    assert _search(a, "zorblax teapot")["results"][0]["product_id"] == "scaleout-teapot"


def test_a_training_triggered_through_both_processes_runs_once(stack: dict) -> None:
    a, b = stack["a"], stack["b"]
    start = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def trigger(name: str, client: httpx.Client) -> None:
        start.wait()
        answers[name] = client.post("/admin/train", json={"algorithm": "grpo"}, headers=KEY)

    threads = [threading.Thread(target=trigger, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r.status_code for r in answers.values())
    assert statuses == [202, 409], {n: (r.status_code, r.text) for n, r in answers.items()}
    run_id = next(r.json()["run_id"] for r in answers.values() if r.status_code == 202)
    refused = next(r.json() for r in answers.values() if r.status_code == 409)
    assert run_id in refused["error"]["message"]
    with session_scope(stack["db_url"]) as s:
        assert s.scalar(select(func.count()).select_from(TrainingRun)) == 1

    # While it trains, the lease names the one worker task that holds it.
    def lease_owner() -> str | None:
        with session_scope(stack["db_url"]) as s:
            run = s.get(TrainingRun, run_id)
            assert run is not None and run.status not in RunStatus.finished(), (
                run and run.error,
                [w.tail() for w in stack["workers"]],
            )
            return run.lease_owner

    owner = wait_until(lease_owner, 300, what="a worker to take the training lease")
    run = wait_until(
        lambda: (
            (r := b.get(f"/admin/runs/{run_id}", headers=KEY).json())["status"]
            in RunStatus.finished()
            and r
        ),
        900,
        interval=2,
        what="the training run to finish",
    )
    assert run["status"] == "rejected", (run["error"], [w.tail() for w in stack["workers"]])
    assert "gate" in run["metrics"] and run["adapter"]
    assert len(a.get("/admin/runs", headers=KEY).json()) == 1
    # Exactly one worker received the task, and it is the lease holder.
    received = {
        w.log.name: TRAIN_TASK_RECEIVED.findall(w.log.read_text()) for w in stack["workers"]
    }
    task_ids = [tid for ids in received.values() for tid in ids]
    assert len(task_ids) == 1, received
    assert owner.endswith(f":{task_ids[0]}"), (owner, received)


def test_an_adapter_promoted_through_a_is_served_by_a_and_b(stack: dict) -> None:
    a, b = stack["a"], stack["b"]
    name = "scaleout-lora"
    from tests.vllm_fixture import make_random_lora

    source = make_random_lora(stack["policy_model_dir"], stack["data_dir"].parent / name, 1)
    register_adapter(
        stack["db_url"],
        stack["data_dir"] / "adapters",
        name,
        source,
        str(stack["policy_model_dir"]),
    )
    assert b.get("/admin/rewrites", headers=KEY).json()["active_adapter"] != name
    promoted = a.post(f"/admin/adapters/{name}/promote", headers=KEY)
    # An in-process policy is loaded, canaried and flipped by the API process itself (200);
    # with vLLM the serving worker warms first (202).
    assert promoted.status_code == 200 and promoted.json()["active"] == name, promoted.text
    # B learns of it from the database pointer, within its poll interval.
    wait_until(
        lambda: b.get("/admin/rewrites", headers=KEY).json()["active_adapter"] == name,
        ADAPTER_POLL_S + MARGIN_S,
        interval=0.2,
        what="B to switch to the promoted adapter",
    )
    # (A process switches only once its policy lists the adapter.) B's own in-process policy
    # generates with it: a query nobody searched, so the answer is not a stored rewrite.
    served = _search(b, "wireless gaming mouse")
    assert served["adapter"] == name and served["rewrite_source"] == "policy", served
    assert a.get("/admin/rewrites", headers=KEY).json()["active_adapter"] == name


def test_the_run_slot_is_claimed_by_one_transaction_at_a_time(db_url: str) -> None:
    """The database-level guarantee behind the 409 above: a second claimant that checks for a
    live run while the first has not committed yet waits for it, then sees its run. (Without
    the lock the second check sees nothing and a second run is created.)"""
    seen: list[str | None] = []
    second_done = threading.Event()

    def second_claimant() -> None:
        with session_scope(db_url) as s:
            live = live_run(s)
            seen.append(live.id if live is not None else None)
            if live is None:
                create_run(s, "ospo", {"trigger": "second"})
        second_done.set()

    with session_scope(db_url) as s:
        assert live_run(s) is None
        first = create_run(s, "ospo", {"trigger": "first"}).id
        t = threading.Thread(target=second_claimant)
        t.start()
        # Give the second claimant time to reach its check while this transaction is open.
        time.sleep(1.0)
        assert not second_done.is_set(), seen
    t.join(60)
    assert seen == [first]
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(TrainingRun)) == 1
