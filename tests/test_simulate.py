"""`ospo simulate`: the click model, pacing, retries, and runs against a real API whose database
must hold exactly what the simulator's summary says it did."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Event, Search
from service.domain import EventType, GradeSet
from service.policy.server import free_port
from service.settings import Settings
from tests.conftest import DATA, make_api_client
from tests.processes import OSPO, Child, wait_http
from trainer.simulation.shoppers import (
    DRAWS_PER_RESULT,
    ClickModel,
    Pacer,
    Simulator,
    click_probability,
    event_id,
    examination_curve,
    load_query_set,
    retry_after_seconds,
    simulate_interactions,
)

ESCI = DATA / "esci" / "sample_2c_full_data.csv"


# ------------------------------------------------------------------------- the click model


def test_examination_curve_is_the_documented_one() -> None:
    np.testing.assert_allclose(examination_curve(ClickModel(), 4), [1, 1 / 2, 1 / 3, 1 / 4])
    np.testing.assert_allclose(
        examination_curve(ClickModel(eta=2.0), 3), [1, 1 / 4, 1 / 9]
    )  # fmt: skip
    explicit = ClickModel(propensities=(1.0, 0.5))
    np.testing.assert_allclose(examination_curve(explicit, 4), [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(click_probability(ClickModel(epsilon=0.1), [0, 1, 0.5]),
                               [0.1, 1.0, 0.55])  # fmt: skip
    for bad in ({"eta": -1}, {"epsilon": 1.5}, {"propensities": (1.0, 2.0)}, {"cart": -0.1}):
        with pytest.raises(ValueError):
            ClickModel(**bad)


def test_action_rates_follow_the_model() -> None:
    model = ClickModel(eta=1.0, epsilon=0.05, cart=0.5, purchase=0.5)
    gains = np.array([1.0, 0.5, 0.1, 0.0, 1.0])
    rng = np.random.default_rng(0)
    n = 20_000
    counts: Counter[tuple[int, str]] = Counter()
    for _ in range(n):
        for a in simulate_interactions(rng, model, gains):
            counts[(a.position, a.type)] += 1
    p_click = examination_curve(model, 5) * click_probability(model, gains)
    p_cart = p_click * 0.5 * gains
    p_buy = p_cart * 0.5 * gains
    for r in range(5):
        for etype, p in (("click", p_click[r]), ("add_to_cart", p_cart[r]), ("purchase", p_buy[r])):
            observed = counts[(r + 1, etype)] / n
            se = math.sqrt(max(p * (1 - p), 1e-12) / n)
            assert abs(observed - p) <= 4 * se + 1e-9, (r + 1, etype, observed, p)


def test_draws_are_fixed_per_result_so_seeds_reproduce_sessions() -> None:
    model = ClickModel()
    a = np.random.default_rng(3)
    b = np.random.default_rng(3)
    assert simulate_interactions(a, model, [1.0] * 7) == simulate_interactions(b, model, [1.0] * 7)
    # Whatever happened, exactly DRAWS_PER_RESULT uniforms per result were consumed.
    c = np.random.default_rng(3)
    c.random((7, DRAWS_PER_RESULT))
    assert a.random() == c.random()


def test_event_ids_are_deterministic_and_fit_the_api() -> None:
    eid = event_id("0" * 36, "p" * 64, "add_to_cart")
    assert eid == event_id("0" * 36, "p" * 64, "add_to_cart") and len(eid) <= 128


def test_query_set_follows_the_trainers_split() -> None:
    every = load_query_set(ESCI, "esci")
    train = load_query_set(ESCI, "esci", "train")
    val = load_query_set(ESCI, "esci", "val")
    assert {e.key for e in train} | {e.key for e in val} == {e.key for e in every}
    assert not {e.key for e in train} & {e.key for e in val}
    with pytest.raises(ValueError, match="split"):
        load_query_set(ESCI, "esci", "test")  # type: ignore[arg-type]


def test_shoppers_see_the_assessed_grades_unless_told_human() -> None:
    chorus = Path(__file__).resolve().parents[1] / "data" / "chorus_icecat"
    labels = chorus / "Broad_Query_Set_rated.csv"
    completed = {e.key: e.targets for e in load_query_set(labels, "chorus")}
    human = {e.key: e.targets for e in load_query_set(labels, "chorus", grades=GradeSet.human)}
    assert completed.keys() >= human.keys()
    # the assessed pool adds products the human raters never saw, and never overrides a human
    added = sum(len(completed[k].keys() - human[k].keys()) for k in human)
    assert added > 1000
    assert all(completed[k][pid] == g for k in human for pid, g in human[k].items())


# ------------------------------------------------------------------------- pacing and retries


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_pacer_lets_the_rate_through_then_waits() -> None:
    pacer = Pacer(2.0)  # 2 per second: two calls pass at once, the third must wait
    assert pacer.wait() and pacer.wait()
    assert not pacer.wait(deadline=0.0)  # waiting would pass the deadline: refused, not slept
    assert Pacer(None).wait(deadline=0.0)
    assert (Pacer(2.5).item.amount, Pacer(2.5).item.multiples) == (5, 2)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        Pacer(-1.0)


# ------------------------------------------------------------------------- against the API


def _database_view(url: str) -> tuple[int, Counter[str], Counter[int]]:
    """Searches, events by type, and clicks by shown position, as the database holds them."""
    with session_scope(url) as s:
        searches = s.scalar(select(func.count()).select_from(Search)) or 0
        shown = dict(s.execute(select(Search.id, Search.product_ids)).all())
        rows = s.execute(select(Event.search_id, Event.product_id, Event.type)).all()
    types = Counter(str(t) for _, _, t in rows)
    positions = Counter(
        shown[sid].index(pid) + 1 for sid, pid, t in rows if str(t) == EventType.click
    )
    return searches, types, positions


def _assert_adds_up(summary: dict, url: str) -> None:  # type: ignore[type-arg]
    searches, types, positions = _database_view(url)
    assert summary["errors"] == 0
    assert searches == summary["searches"] == summary["sessions"]
    assert types["click"] == summary["clicks"] > 0
    assert types["add_to_cart"] == summary["carts"]
    assert types["purchase"] == summary["purchases"]
    assert sum(types.values()) == summary["events_stored"] == summary["events_sent"]
    assert [positions[r + 1] for r in range(len(summary["clicks_by_position"]))] == summary[
        "clicks_by_position"
    ]
    clicked = summary["ctr"] * summary["searches"]
    assert clicked == pytest.approx(round(clicked)) and clicked <= summary["clicks"]


def test_simulator_in_process_retries_429_and_its_summary_adds_up(
    sqlite_url: str, small_index_root: Path, tmp_path: Path
) -> None:
    # The API allows 4 searches a second, the simulator does not pace: it must be told to
    # wait (429 + Retry-After) and retry, and lose nothing.
    overrides = {"rate_limit_search": "4/second"}
    if "explore_share" in Settings.model_fields:
        overrides["explore_share"] = 0.0  # the same results for the same query: comparable runs
    queries = load_query_set(ESCI, "esci")
    model = ClickModel(epsilon=0.3)  # clicks on most sessions even where judged results are few
    with make_api_client(sqlite_url, small_index_root, tmp_path, **overrides) as client:
        sim = Simulator(client, queries, model, k=5, rate=None, seed=11, batch_size=7)
        summary = sim.run(sessions=10).as_dict()
        assert summary["retries"] >= 1 and summary["stopped_by"] == "sessions"
        _assert_adds_up(summary, sqlite_url)
        assert summary["propensity_curve"] == examination_curve(model, 5).tolist()
        # Same seed, same API: the same shoppers do the same things.
        again = Simulator(client, queries, model, k=5, rate=None, seed=11).run(sessions=10)
    for key in ("clicks", "carts", "purchases", "clicks_by_position"):
        assert again.as_dict()[key] == summary[key]


@pytest.fixture
def api_server(tmp_path: Path, small_index_root: Path):  # type: ignore[no-untyped-def]
    import shutil

    shutil.copytree(small_index_root, tmp_path / "indexes")
    url = f"sqlite:///{tmp_path / 'ospo.db'}"
    upgrade(url)
    port = free_port()
    env = {
        "OSPO_DATA_DIR": str(tmp_path),
        "OSPO_DATABASE_URL": url,
        "OSPO_POLICY_BACKEND": "none",
        "OSPO_RATE_LIMIT_SEARCH": "",
        "OSPO_RATE_LIMIT_EVENTS": "",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
    child = Child([OSPO, "serve", "--port", str(port)], {**clean, **env}, tmp_path / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", child)
        yield f"http://127.0.0.1:{port}", url
    finally:
        child.stop()


@pytest.mark.slow
def test_ospo_simulate_against_ospo_serve(api_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, db = api_server
    out = tmp_path / "summary.json"
    run = subprocess.run(
        [OSPO, "simulate", "--url", base, "--labels", str(ESCI), "--format", "esci",
         "--sessions", "12", "--rate", "50", "--seed", "4", "--k", "8", "--epsilon", "0.3",
         "--batch-size", "5", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(out.read_text())
    assert summary["stopped_by"] == "sessions" and "CTR" in run.stdout
    _assert_adds_up(summary, db)
    # A bad option value is refused before any traffic (exit 2), an absent API is exit 3.
    bad = subprocess.run([OSPO, "simulate", "--url", base, "--propensities", "1,x"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "propensities" in bad.stderr
    down = subprocess.run(
        [OSPO, "simulate", "--url", f"http://127.0.0.1:{free_port()}", "--sessions", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 3 and "does not answer" in down.stderr
    assert _database_view(db)[0] == summary["searches"]  # the refused runs searched nothing
