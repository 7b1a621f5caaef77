"""The console's admin tabs in a real browser (fixtures: conftest.py): adapters
(promote and rollback, confirmed), runs (the reward curve, the gate, "train now"), analytics
(the figures the API counts) and rules (create, edit, delete, and a pin firing on a search).

No worker runs here, so "train now" queues a run no worker trains (and the test marks it
failed afterwards, so a later worker would skip it).
"""

from __future__ import annotations

import re

import httpx
import pytest

from service.db.engine import session_scope
from service.repositories.runs import finish_run
from tests.console.page import AUTH, Page, signed_in
from tests.processes import wait_until

pytestmark = [pytest.mark.slow]


def test_adapters_tab_lists_the_registry_and_confirms_promote_and_rollback(console: Page) -> None:
    signed_in(console)
    console.tab("adapters")
    page = console.page
    page.wait_for_selector("#adapters-list tr[data-adapter]")
    assert page.locator("#adapters-list tr[data-adapter]").count() == 3
    candidate = console.text('tr[data-adapter="ospo-20250102-000000-bbbb"]')
    assert "candidate" in candidate and "passed" in candidate and "ok · 120 ms" in candidate
    assert "failed" in console.text('tr[data-adapter="grpo-20250103-000000-cccc"]')
    # rejected adapters offer no promote button; the others do
    assert page.locator("button[data-promote]").count() == 2
    console.shot("adapters")

    # A dismissed confirmation sends nothing.
    console.accept_dialogs = False
    page.click('button[data-promote="ospo-20250102-000000-bbbb"]')
    assert console.dialogs[-1].startswith("Promote adapter ospo-20250102-000000-bbbb?")
    assert console.text("#adapters-status") == ""
    # Accepted: this API has no policy backend, so the API's 409 is shown as it came.
    console.accept_dialogs = True
    page.click('button[data-promote="ospo-20250102-000000-bbbb"]')
    page.wait_for_selector("#adapters-status .msg-error")
    assert "409 conflict" in console.text("#adapters-status")
    assert "no policy backend" in console.text("#adapters-status")
    page.click("#rollback")
    assert console.dialogs[-1].startswith("Roll back")
    page.wait_for_selector("#adapters-status .msg-error")
    assert "Rollback failed: 409" in console.text("#adapters-status")


def test_runs_tab_shows_a_reward_curve_the_gate_and_queues_training(console: Page, server) -> None:  # type: ignore[no-untyped-def]
    signed_in(console)
    console.tab("runs")
    page = console.page
    promoted = server["runs"]["promoted"]
    page.wait_for_selector(f'tr[data-run-row="{promoted}"]')
    assert "promoted" in console.text(f'tr[data-run-row="{promoted}"]')
    page.click(f'button[data-run="{promoted}"]')
    page.wait_for_selector("#run svg.chart")
    # 12 steps of reward and sample NDCG, validation at steps 0, 5 and 10 (the warm-start row
    # is not a step)
    reward = page.locator('#run g[data-series="reward (mean of the group)"] circle')
    assert reward.count() == 12
    assert page.locator('#run g[data-series="validation NDCG@10 (greedy)"] circle').count() == 3
    assert page.locator("#run polyline.line").count() == 3
    assert page.locator("#run polygon.band").count() == 1
    first = reward.first.locator("title").text_content()
    assert first == "reward (mean of the group) · 1: 0.37"
    detail = console.text("#run")
    assert "passed" in detail and "Δ vs raw" in detail and "31 trained of 39 labelled" in detail
    console.shot("runs")

    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#runs-status .msg-ok")
    queued = re.search(r"Run (\S+) is queued", console.text("#runs-status"))
    assert queued, console.text("#runs-status")
    run_id = queued.group(1)
    page.wait_for_selector(f'tr[data-run-row="{run_id}"]')
    assert "queued" in console.text(f'tr[data-run-row="{run_id}"]')
    # one live run at a time: a second press shows the API's 409
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#runs-status .msg-error")
    assert "409" in console.text("#runs-status")
    with session_scope(server["url"]) as s:  # no worker may ever train it (see the docstring)
        finish_run(s, run_id, "failed", error="console test: not trained")


def test_analytics_tab_shows_the_figures_the_api_counts(console: Page, server) -> None:  # type: ignore[no-untyped-def]
    signed_in(console)
    expected = httpx.get(
        f"{server['base']}/admin/analytics", params={"days": 30, "top": 10}, headers=AUTH
    ).json()
    totals = expected["totals"]
    assert totals["searches"] >= 6 and totals["no_result_searches"] >= 1
    console.tab("analytics")
    page = console.page
    page.wait_for_selector("#figures .card")
    assert console.text('[data-figure="searches"] .card-value') == f"{totals['searches']:,}"
    ctr = f"{totals['click_through_rate'] * 100:.1f}%"
    assert console.text('[data-figure="ctr"] .card-value') == ctr
    no_result = f"{totals['no_result_rate'] * 100:.1f}%"
    assert console.text('[data-figure="no_result_rate"] .card-value') == no_result
    # one point per day of the window on the searches chart; four rates on the other
    assert page.locator("#chart-searches circle").count() == len(expected["per_day"]) == 30
    assert page.locator("#chart-rates g.series").count() == 4
    top = console.text("#top-queries")
    assert "6 dining chairs" in top and "plants" in top
    assert "zzqx nothing" in console.text("#top-no-result")
    console.shot("analytics")


def test_rules_tab_creates_edits_and_deletes_a_rule(console: Page, server) -> None:  # type: ignore[no-untyped-def]
    spec = httpx.get(f"{server['base']}/openapi.json").json()
    if "/admin/rules" not in spec["paths"]:
        pytest.skip("this API has no /admin/rules yet")
    signed_in(console)
    console.tab("rules")
    page = console.page
    page.wait_for_selector("#rules-list table")
    page.select_option("#rule-form select[name=kind]", "synonym")
    page.fill("#rule-form input[name=terms]", "sofa, couch, settee")
    page.fill("#rule-form input[name=note]", "console test")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-status .msg-ok")
    created = re.search(r"Created rule #(\d+)", console.text("#rules-status"))
    assert created, console.text("#rules-status")
    rule_id = created.group(1)
    row = f'tr[data-rule="{rule_id}"]'
    page.wait_for_selector(row)
    assert "sofa, couch, settee" in console.text(row)

    page.select_option("#rule-form select[name=kind]", "pin")
    page.fill("#rule-form input[name=query]", "Plants")
    first = httpx.post(f"{server['base']}/v1/search", json={"query": "plants", "k": 3}).json()
    pinned = first["results"][2]["product_id"]
    page.fill("#rule-form input[name=product_ids]", pinned)
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-status .msg-ok")
    pin_id = re.search(r"Created rule #(\d+)", console.text("#rules-status")).group(1)  # type: ignore[union-attr]
    page.wait_for_selector(f'tr[data-rule="{pin_id}"]')
    assert "plants" in console.text(f'tr[data-rule="{pin_id}"]')  # normalised by the API
    # a bad rule: the API's 422 message is shown
    page.select_option("#rule-form select[name=kind]", "synonym")
    page.fill("#rule-form input[name=terms]", "lonely")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-status .msg-error")
    assert "422" in console.text("#rules-status")
    console.shot("rules")

    # edit the synonym: its terms change in place
    page.click(f'{row} button:has-text("Edit")')
    assert page.input_value("#rule-form input[name=terms]") == "sofa, couch, settee"
    page.fill("#rule-form input[name=terms]", "sofa, couch")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-status .msg-ok")
    wait_until(lambda: "settee" not in console.text(row), 10, what="the edited rule")
    assert "sofa, couch" in console.text(row)

    # the pin fires on a search from the search tab, which says so
    console.tab("search")
    page.uncheck("#search-form input[name=explain]")
    page.fill("#search-form input[name=query]", "plants")
    page.fill("#search-form input[name=k]", "3")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results li.result")
    assert f"pin #{pin_id}" in console.text("#rewrite")
    assert "pinned" in console.text("#results li.result >> nth=0")
    console.shot("search-rule-fired")

    console.tab("rules")
    for rid in (rule_id, pin_id):
        page.wait_for_selector(f'tr[data-rule="{rid}"]')
        page.click(f'tr[data-rule="{rid}"] button:has-text("Delete")')
        page.wait_for_selector(f'tr[data-rule="{rid}"]', state="detached")
    assert console.dialogs[-1].startswith(f"Delete rule #{pin_id}")
