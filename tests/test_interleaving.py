"""Team-draft interleaving (properties by brute force) and the comparison before promotion,
served, credited and decided through the real API and database."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from service.adapters.registry import register_adapter
from service.db.engine import session_scope
from service.db.models import Search
from service.domain import ComparisonStatus, RunStatus
from service.interleaving import BASELINE, CANDIDATE, decide, outcome, tally, team_draft
from service.repositories.adapters import get_adapter
from service.repositories.runs import create_run, finish_run, get_run
from service.services.comparisons import decide_running, recompute, start_comparison
from service.services.promotion import promote
from tests.conftest import make_api_client

KEY = {"Authorization": "Bearer s3cret"}
rankings = st.lists(st.integers(0, 30), unique=True, max_size=15)


@settings(max_examples=300, deadline=None)
@given(a=rankings, b=rankings, k=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_team_draft_properties(a: list[int], b: list[int], k: int, seed: int) -> None:
    shown, teams = team_draft(a, b, k, random.Random(seed))
    assert len(shown) == len(set(shown)) == min(k, len(set(a) | set(b)))
    assert len(teams) == len(shown)
    for team, ranking in ((CANDIDATE, a), (BASELINE, b)):
        for i, (item, t) in enumerate(zip(shown, teams, strict=True)):
            if t == team:
                # Each pick is the team's best result not shown before it.
                best = next(x for x in ranking if x not in shown[:i])
                assert item == best
    # While both teams still have results, neither gets two picks ahead.
    for i in range(len(shown)):
        c, bb = teams[: i + 1].count(CANDIDATE), teams[: i + 1].count(BASELINE)
        exhausted = not [x for x in a if x not in shown[: i + 1]] or not [
            x for x in b if x not in shown[: i + 1]
        ]
        assert abs(c - bb) <= 1 or exhausted


def test_identical_rankings_interleave_to_the_ranking_with_fair_teams() -> None:
    rng = random.Random(0)
    counts = {CANDIDATE: 0, BASELINE: 0}
    for _ in range(400):
        shown, teams = team_draft(list(range(10)), list(range(10)), 10, rng)
        assert shown == list(range(10))
        counts[teams[0]] += 1  # who picks first is the coin
    assert 150 < counts[CANDIDATE] < 250


def test_outcome_tally_and_decision_by_hand() -> None:
    teams = ["c", "b", "c", "b"]
    assert outcome(teams, []) is None
    assert outcome(teams, [1]) == 1 and outcome(teams, [2, 2]) == -1
    assert outcome(teams, [1, 2]) == 0 and outcome(teams, [1, 3, 2]) == 1
    assert outcome(teams, [9]) is None  # not a shown position
    t = tally([1, 1, -1, 0, None, 1], confidence=0.95)
    assert (t.interleaved, t.searches, t.wins, t.losses, t.ties) == (6, 5, 3, 1, 1)
    assert t.preference == pytest.approx(0.4)
    # s² = (3·0.36 + 1.96 + 0.16) / 4 = 0.8; half-width 1.96·√(0.8/5)
    assert t.high - t.preference == pytest.approx(1.959964 * (0.8 / 5) ** 0.5, rel=1e-5)
    assert decide(t, 10, 100, False) == ComparisonStatus.running  # too few yet
    assert decide(tally([1] * 12, 0.99), 10, 100, False) == ComparisonStatus.won
    assert decide(tally([-1] * 12, 0.99), 10, 100, False) == ComparisonStatus.lost
    assert decide(tally([1, -1] * 6, 0.99), 10, 12, False) == ComparisonStatus.expired
    assert decide(tally([1, -1] * 6, 0.99), 10, 100, True) == ComparisonStatus.expired


def _adapter(tmp_path: Path, db_url: str, adapters_dir: Path, name: str) -> None:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(name.encode())
    register_adapter(db_url, adapters_dir, name, src, "base")


def _interleaved(client, n: int) -> list[Search]:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(n):
        r = client.post(
            "/v1/search", json={"query": ["usb c cable", "dog bed", "mug"][i % 3], "k": 6}
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["search_id"])
    client.app.state.search_log.wait_written(set(ids))
    with session_scope(client.db_url) as session:
        rows = session.scalars(select(Search).where(Search.id.in_(ids))).all()
        session.expunge_all()
    assert len(rows) == n
    return list(rows)


@pytest.mark.parametrize("side", [CANDIDATE, BASELINE])
def test_comparison_serves_credits_and_decides(
    db_url: str, small_index_root: Path, tmp_path: Path, side: str
) -> None:
    with make_api_client(
        db_url,
        small_index_root,
        tmp_path,
        interleave_share=1.0,
        interleave_min_searches=10,
        adapter_poll_s=0.2,
    ) as client:
        cfg = client.app.state.settings
        _adapter(tmp_path, db_url, cfg.adapters_dir, "cand")
        with session_scope(db_url) as session:
            run_id = create_run(session, "ospo", {}).id
            finish_run(session, run_id, RunStatus.comparing, adapter="cand")
        comparison_id = start_comparison(cfg, run_id, "cand", None)
        assert client.post("/admin/train", headers=KEY).status_code == 409  # the slot is held
        deadline = time.monotonic() + 20
        while not all(s.comparison_id == comparison_id for s in _interleaved(client, 1)):
            assert time.monotonic() < deadline, "the API never picked the comparison up"
            time.sleep(0.2)
        rows = _interleaved(client, 12)
        assert all(s.comparison_id == comparison_id and len(s.teams) == 6 for s in rows)
        # Shoppers engage with the first result of one side (and once with nothing).
        events = []
        for i, s in enumerate(rows[:-1]):
            pos = s.teams.index(side) + 1
            events.append(
                {
                    "event_id": f"{side}-{i}",
                    "search_id": s.id,
                    "product_id": s.product_ids[pos - 1],
                    "type": "click",
                }
            )
        assert client.post("/v1/events", json=events).status_code == 200
        t = recompute(cfg, comparison_id)
        assert (t.searches, t.wins + t.losses) == (11, 11)
        assert (t.wins if side == CANDIDATE else t.losses) == 11
        listed = client.get("/admin/comparisons", headers=KEY).json()
        assert listed[0]["id"] == comparison_id and listed[0]["status"] == "running"
        assert listed[0]["tally"]["searches"] == 11

        decided = decide_running(cfg)
        want = ComparisonStatus.won if side == CANDIDATE else ComparisonStatus.lost
        assert [d["status"] for d in decided] == [want]
        with session_scope(db_url) as session:
            run = get_run(session, run_id)
            adapter = get_adapter(session, "cand")
            assert run is not None and adapter is not None
            if side == CANDIDATE:
                assert run.status == RunStatus.promoted and adapter.status == "active"
            else:
                assert run.status == RunStatus.rejected and adapter.status == "rejected"
            assert run.metrics["comparison"]["tally"]["searches"] == 11
        assert decide_running(cfg) == []  # nothing runs any more
        deadline = time.monotonic() + 20
        while any(s.comparison_id for s in _interleaved(client, 1)):
            assert time.monotonic() < deadline, "the API kept interleaving a decided comparison"
            time.sleep(0.2)


def test_abort_and_baseline_change(db_url: str, small_index_root: Path, tmp_path: Path) -> None:
    with make_api_client(db_url, small_index_root, tmp_path, interleave_share=1.0) as client:
        cfg = client.app.state.settings
        _adapter(tmp_path, db_url, cfg.adapters_dir, "c1")
        first = start_comparison(cfg, None, "c1", None)
        r = client.post(f"/admin/comparisons/{first}/abort", headers=KEY)
        assert r.status_code == 200 and r.json()["status"] == "aborted"
        assert client.post(f"/admin/comparisons/{first}/abort", headers=KEY).status_code == 409
        assert client.post("/admin/comparisons/nope/abort", headers=KEY).status_code == 404
        _adapter(tmp_path, db_url, cfg.adapters_dir, "c2")
        _adapter(tmp_path, db_url, cfg.adapters_dir, "other")
        second = start_comparison(cfg, None, "c2", None)
        # Someone promotes by hand: the comparison's baseline (the raw query) no longer serves.
        assert promote(cfg, "other")["active"] == "other"
        assert [d["status"] for d in decide_running(cfg)] == [ComparisonStatus.aborted]
        statuses = {
            c["id"]: c["status"] for c in client.get("/admin/comparisons", headers=KEY).json()
        }
        assert statuses == {first: "aborted", second: "aborted"}
