"""The console's comparisons tab in a real browser (fixtures: conftest.py).

Two interleaved comparisons are seeded the way the update task and beat make them
(`start_comparison` and `decide_running` with the server's settings), their interleaved
searches written as the search log writes them and the shoppers' clicks sent through the API;
the test aborts the running one from the page. Its module has a server of its own, so no other
test sees its adapters or its running comparison.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from service.adapters.registry import register_adapter
from service.db.engine import session_scope
from service.repositories.runs import create_run, finish_run, get_run
from service.repositories.searches import add_searches
from service.services.comparisons import decide_running, start_comparison
from service.settings import Settings
from tests.console.page import AUTH, KEY, Page, signed_in
from tests.console.seed import metrics_steps

pytestmark = [pytest.mark.slow]

LOST_CANDIDATE = "ospo-20250104-000000-dddd"
RUNNING_CANDIDATE = "ospo-20250105-000000-eeee"
TEAMS = ["c", "b", "c", "b"]  # who contributed each of the four shown products
# Positions the shopper clicked in each interleaved search: position 1 is the candidate's
# product, 2 the baseline's; both is a tie; None shows an impression only (no information).
WIN, LOSS, TIE, NOTHING = (1,), (2,), (1, 2), None


def _comparing_run(settings: Settings, candidate: str, data: Path) -> tuple[str, str]:
    """A registered candidate (placeholder files: nothing loads them here), its run in
    `comparing` and its comparison against the raw query, as trainer/online/update.py leaves
    them."""
    url = settings.resolved_database_url
    src = data / f"src-{candidate}"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(candidate.encode())
    register_adapter(url, settings.adapters_dir, candidate, src, "smollm2-135m-instruct")
    with session_scope(url) as s:
        run_id = create_run(s, "ospo", {"overrides": {}}).id
    comparison_id = start_comparison(settings, run_id, candidate, None)
    from trainer.online.gate import gate_decision

    passed = gate_decision([0.66, 0.58, 0.73, 0.61], [0.50, 0.41, 0.58, 0.49], None)
    with session_scope(url) as s:
        finish_run(s, run_id, "comparing", adapter=candidate,
                   metrics={"steps": metrics_steps(12), "gate": passed, "adapter": candidate,
                            "labelled_queries": 39, "train_queries": 31,
                            "comparison_id": comparison_id})  # fmt: skip
        run = get_run(s, run_id)
        assert run is not None
        run.started_at = run.finished_at - timedelta(minutes=3)
    return run_id, comparison_id


def _interleaved_traffic(base: str, url: str, comparison_id: str, clicks: list) -> None:  # type: ignore[type-arg]
    """Interleaved searches written as the search log writes them (the test API has no stored
    candidate rewrites to interleave), then the shoppers' events through the API, which
    stores each with the position it was shown at."""
    with httpx.Client(base_url=base, timeout=60) as c:
        shown = [
            r["product_id"]
            for r in c.post("/v1/search", json={"query": "plants", "k": 4}).json()["results"]
        ]
        assert len(set(shown)) == 4
        ids = [str(uuid.uuid4()) for _ in clicks]
        with session_scope(url) as s:
            add_searches(s, [{
                "id": sid, "query": "plants", "normalized_query": "plants", "rewrite": "plants",
                "rewrite_source": "none", "adapter": None, "k": 4, "product_ids": shown,
                "scores": [1.0, 0.9, 0.8, 0.7], "latency_ms": 5.0,
                "comparison_id": comparison_id, "teams": TEAMS,
            } for sid in ids])  # fmt: skip
        events = []
        for sid, positions in zip(ids, clicks, strict=True):
            for pos in positions or (1,):
                events.append({"event_id": str(uuid.uuid4()), "search_id": sid,
                               "product_id": shown[pos - 1],
                               "type": "click" if positions else "impression"})  # fmt: skip
        r = c.post("/v1/events", json=events)
        assert r.status_code == 200 and r.json()["stored"] == len(events), r.text


def _signed(v: float) -> str:
    """The console's signed number (attribution.js `signed`, 3 decimals)."""
    return f"{'+' if v > 0 else '−' if v < 0 else '±'}{abs(v):.3f}"


def _preference(t: dict) -> str:  # type: ignore[type-arg]
    return f"{_signed(t['preference'])} [{_signed(t['low'])}, {_signed(t['high'])}]"


def _bar(page, selector: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """The interval bar's numbers and geometry: where 0, the interval's ends and Δ are drawn."""
    return page.eval_on_selector(
        f"{selector} svg.interval",
        """svg => ({
            verdict: svg.dataset.verdict, low: Number(svg.dataset.low),
            high: Number(svg.dataset.high), preference: Number(svg.dataset.preference),
            zero: Number(svg.querySelector('.interval-zero').getAttribute('x1')),
            lo: Number(svg.querySelector('.interval-ci').getAttribute('x1')),
            hi: Number(svg.querySelector('.interval-ci').getAttribute('x2')),
            mean: Number(svg.querySelector('.interval-mean').getAttribute('cx')),
            cut: svg.querySelectorAll('.interval-cut').length,
            title: svg.querySelector('title').textContent,
        })""",
    )


def test_comparisons_tab_shows_tallies_and_aborts_the_running_one(console: Page, server) -> None:  # type: ignore[no-untyped-def]
    base, url = server["base"], server["url"]
    settings = Settings(
        data_dir=server["data"], database_url=url, admin_api_key=KEY, policy_backend="none",
        interleave_min_searches=10, interleave_share=0.25,
    )  # fmt: skip
    # One decided by beat's rule: the shoppers preferred the raw query's products (1 win,
    # 10 losses, 1 tie: Δ −0.75, its 99% interval wholly below 0) ...
    lost_run, lost = _comparing_run(settings, LOST_CANDIDATE, server["data"])
    _interleaved_traffic(base, url, lost, [WIN] + [LOSS] * 10 + [TIE])
    assert [d["status"] for d in decide_running(settings)] == ["lost"]
    # ... and one still running: 6 interleaved, 5 with engagement, Δ +0.4, undecided.
    running_run, running = _comparing_run(settings, RUNNING_CANDIDATE, server["data"])
    try:
        _interleaved_traffic(base, url, running, [WIN, WIN, WIN, LOSS, TIE, NOTHING])
        listed = {c["id"]: c for c in httpx.get(f"{base}/admin/comparisons", headers=AUTH).json()}
        assert set(listed) == {lost, running}
        t_lost, t_run = listed[lost]["tally"], listed[running]["tally"]
        assert (t_lost["interleaved"], t_lost["wins"], t_lost["losses"], t_lost["ties"]) == (
            12,
            1,
            10,
            1,
        )
        assert (
            t_run["interleaved"],
            t_run["searches"],
            t_run["wins"],
            t_run["losses"],
            t_run["ties"],
        ) == (6, 5, 3, 1, 1)
        assert t_lost["high"] < 0 < t_run["high"] and t_run["low"] < 0 < t_run["preference"]

        signed_in(console)
        # The comparing run's detail shows its comparison with the live tally.
        console.tab("runs")
        page = console.page
        page.wait_for_selector(f'tr[data-run-row="{running_run}"]')
        assert "comparing" in console.text(f'tr[data-run-row="{running_run}"]')
        page.click(f'button[data-run="{running_run}"]')
        page.wait_for_selector(f'#run-comparison [data-comparison="{running}"]')
        detail = console.text("#run-comparison")
        assert (
            "running" in detail and "preference (live)" in detail and _preference(t_run) in detail
        )
        assert console.text("#run-comparison [data-field=wlt]") == "3 / 1 / 1"
        assert "6 (5 with engagement)" in detail and "raw query" in detail

        console.tab("comparisons")
        page.wait_for_selector("#comparisons-list tr[data-comparison]")
        assert page.locator("#comparisons-list tr[data-comparison]").count() == 2
        rows = {cid: f'#comparisons-list tr[data-comparison="{cid}"]' for cid in (lost, running)}
        for cid, status, t in [(lost, "lost", t_lost), (running, "running", t_run)]:
            row = rows[cid]
            assert page.locator(f"{row} .badge-{status}").inner_text() == status
            assert console.text(f"{row} [data-field=interleaved]") == str(t["interleaved"])
            assert console.text(f"{row} [data-field=searches]") == str(t["searches"])
            assert (
                console.text(f"{row} [data-field=wlt]")
                == f"{t['wins']} / {t['losses']} / {t['ties']}"
            )
            assert console.text(f"{row} .preference-text") == _preference(t)
            bar = _bar(page, row)
            assert (bar["low"], bar["high"], bar["preference"]) == (
                t["low"],
                t["high"],
                t["preference"],
            )
            assert bar["lo"] < bar["mean"] < bar["hi"]
            assert f"over {t['searches']} searches" in bar["title"]
        lost_bar, run_bar = _bar(page, rows[lost]), _bar(page, rows[running])
        # lost: the whole interval left of 0 (its low end past −1 is cut and marked);
        # running: the interval spans 0, Δ right of it
        assert lost_bar["verdict"] == "below" and lost_bar["hi"] < lost_bar["zero"]
        assert t_lost["low"] < -1 and lost_bar["cut"] == 1
        assert run_bar["verdict"] == "spans" and run_bar["lo"] < run_bar["zero"] < run_bar["mean"]
        assert "interval lies below 0" in console.text(rows[lost])
        assert LOST_CANDIDATE in console.text(rows[lost]) and "raw query" in console.text(
            rows[lost]
        )
        assert "interleaving 25% of searches" in console.text(rows[running])
        # only the running one can be aborted
        assert page.locator("#comparisons-list button[data-abort]").count() == 1
        console.shot("comparisons")

        # A dismissed confirmation sends nothing.
        console.accept_dialogs = False
        page.click(f'button[data-abort="{running}"]')
        assert console.dialogs[-1].startswith(f"Abort the comparison of {RUNNING_CANDIDATE}?")
        assert console.text("#comparisons-status") == ""
        assert page.locator(f"{rows[running]} .badge-running").count() == 1
        # Accepted: the row turns aborted, and the API, the run and the adapter agree.
        console.accept_dialogs = True
        page.click(f'button[data-abort="{running}"]')
        page.wait_for_selector("#comparisons-status .msg-ok")
        assert f"{RUNNING_CANDIDATE} is rejected" in console.text("#comparisons-status")
        page.wait_for_selector(f'{rows[running]}[data-status="aborted"] .badge-aborted')
        assert "aborted by hand" in console.text(rows[running])
        assert page.locator("#comparisons-list button[data-abort]").count() == 0
        after = {c["id"]: c for c in httpx.get(f"{base}/admin/comparisons", headers=AUTH).json()}
        assert after[running]["status"] == "aborted" and after[running]["decided_at"]
        assert after[running]["decision"]["reason"] == "aborted by hand"
        assert after[lost]["status"] == "lost"
        runs = {rid: httpx.get(f"{base}/admin/runs/{rid}", headers=AUTH).json()
                for rid in (lost_run, running_run)}  # fmt: skip
        assert runs[running_run]["status"] == runs[lost_run]["status"] == "rejected"
        assert runs[running_run]["metrics"]["comparison"]["status"] == "aborted"
        adapters = {
            a["name"]: a["status"] for a in httpx.get(f"{base}/admin/adapters", headers=AUTH).json()
        }
        assert adapters[RUNNING_CANDIDATE] == adapters[LOST_CANDIDATE] == "rejected"
        # aborting twice: the API's 409 (another console may have been first)
        r = httpx.post(f"{base}/admin/comparisons/{running}/abort", headers=AUTH)
        assert r.status_code == 409

        # The decided run's detail: its comparison with the tally it was decided on.
        console.tab("runs")
        page.wait_for_selector(f'button[data-run="{lost_run}"]')
        page.click(f'button[data-run="{lost_run}"]')
        page.wait_for_selector(f'#run-comparison [data-comparison="{lost}"]')
        detail = console.text("#run-comparison")
        assert "lost" in detail and "preference at the decision" in detail
        assert _preference(runs[lost_run]["metrics"]["comparison"]["tally"]) in detail
        assert console.text("#run-comparison [data-field=wlt]") == "1 / 10 / 1"
        assert "interval lies below 0" in detail and "99%" in detail
        console.page.locator("#run").screenshot(path=str(console.shots / "run-comparison.png"))
        print(f"screenshot: {console.shots / 'run-comparison.png'}")
    finally:
        # never leave a running comparison behind (it holds the one-comparison slot)
        httpx.post(f"{base}/admin/comparisons/{running}/abort", headers=AUTH)
