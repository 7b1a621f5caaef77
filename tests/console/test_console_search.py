"""The console's search tab in a real browser (fixtures: conftest.py): results,
rewrite, timings, filters, facets, and the attribution colours of an explained rewrite.

The attribution colours are real when the policy model is prepared: `test_search_tab...` starts
an `ospo worker` (SQLite broker, no Redis) for the length of that test only. The colour rule
itself is also checked on a stored explain answer with known positive, negative and zero
values.
"""

from __future__ import annotations

import re

import pytest

from service.workers import live_queues
from tests.console.page import EXPLAIN_QUERY, EXPLAIN_TIMEOUT_S, Page, signed_in
from tests.processes import OSPO, Child, wait_until

pytestmark = [pytest.mark.slow]


def _colour(page, selector: str) -> list[tuple[float, str]]:  # type: ignore[no-untyped-def]
    """(attribution, computed background colour) of each coloured phrase."""
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => [Number(e.dataset.attribution), getComputedStyle(e).backgroundColor])",
    )


def _rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return r, g, b


def _check_colours(pairs: list[tuple[float, str]]) -> None:
    """Green where the phrase helped, red where it hurt, grey at zero."""
    for value, css in pairs:
        r, g, b = _rgb(css)
        if value > 0:
            assert g > r and g > b, (value, css)
        elif value < 0:
            assert r > g and r > b, (value, css)
        else:
            assert r == g == b, (value, css)


def test_search_tab_shows_results_rewrite_timings_and_attribution(console: Page, server) -> None:  # type: ignore[no-untyped-def]
    from service.policy.models import PolicyModelError, prepare_policy_model
    from tests.vllm_fixture import models_cache_dir

    try:
        model = str(prepare_policy_model(models_cache_dir()))
    except PolicyModelError as e:
        model = None
        print(f"no policy model ({e}): the explain panel shows the worker's absence instead")
    worker = (
        Child(
            [OSPO, "worker"],
            {**server["env"], "OSPO_POLICY_MODEL": model},
            server["data"] / "worker.log",
        )  # fmt: skip
        if model
        else None
    )
    try:
        if worker is not None:  # explain answers 503 at once until the worker beats
            wait_until(lambda: "celery" in live_queues(server["url"]), 120, what="worker beat")
        signed_in(console)
        page = console.page
        page.fill("#search-form input[name=query]", EXPLAIN_QUERY)
        page.fill("#search-form input[name=k]", "7")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#results li.result")
        assert page.locator("#results li.result").count() == 7
        assert "Results (7)" in console.text("#results h3")
        rewrite = console.text("#rewrite")
        assert EXPLAIN_QUERY in rewrite and "none" in rewrite  # no policy: source none
        assert page.locator("#timings .bar-row").count() >= 3
        assert "total" in console.text("#timings")
        if model:
            page.wait_for_selector("#explain .explanation", timeout=EXPLAIN_TIMEOUT_S * 1000)
            text = console.text("#explain")
            assert "NDCG@10 of the rewrite" in text and "raw query" in text
            pairs = _colour(page, "#explain .seg")
            rows = page.locator("#explain table.grid tbody tr").count()
            if pairs:
                assert rows == len(pairs)
                _check_colours(pairs)
                hover = page.locator("#explain .seg").first.get_attribute("title")
                assert hover and "NDCG@10" in hover
            else:
                assert "added nothing" in text
        else:
            page.wait_for_selector("#explain .msg-warn >> text=No worker is running")
        console.shot("search")
        if model:
            # a query nobody judged: the worker's 404 is shown as the reason, not as a failure
            page.fill("#search-form input[name=query]", "zzqx nothing")
            page.click("#search-form button[type=submit]")
            page.wait_for_selector("#explain .msg-info >> text=judged products", timeout=120_000)
            assert "404 no_labels" in console.text("#explain")
    finally:
        if worker is not None:
            worker.stop()


def test_search_filters_come_from_the_form_and_the_facets(console: Page) -> None:
    """Clicking a brand facet filters by it; the price range goes out as `filters.price`."""
    signed_in(console)
    page = console.page
    page.uncheck("#search-form input[name=explain]")
    page.fill("#search-form input[name=query]", "dining chairs")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#facets button.link")
    brand = page.locator("#facets .facet").first
    assert brand.locator("h4").inner_text().lower() == "brand"
    value = brand.locator("button.link").first.inner_text()
    brand.locator("button.link").first.click()
    page.wait_for_function(
        """v => {
            const shown = [...document.querySelectorAll('#results li.result')];
            return shown.length > 0 && shown.every(e => e.dataset.brand === v);
        }""",
        arg=value,
    )
    assert page.input_value("#search-form input[name=brand]") == value
    # (facet counts are over the unfiltered candidates, not the catalogue: no bound from them)
    assert page.locator("#results li.result").count() >= 1
    console.shot("search-filtered")

    # The ESCI sample has no prices, and a product without a price fails any price bound: the
    # range is sent as the contract says and the empty answer is shown as such.
    page.fill("#search-form input[name=brand]", "")
    page.fill("#search-form input[name=price_min]", "20")
    page.fill("#search-form input[name=price_max]", "60")
    with page.expect_request("**/v1/search") as sent:
        page.click("#search-form button[type=submit]")
    assert sent.value.post_data_json["filters"] == {"price": {"min": 20, "max": 60}}
    page.wait_for_selector("#results .msg-info")
    assert "No results." in console.text("#results")


STORED_EXPLAIN = {
    "query": "usb c hub",
    "adapter": "ospo-20250102-000000-bbbb",
    "rewrite": "usb c hub, 4 ports, hdmi adapter, red",
    "expansion": "4 ports, hdmi adapter, red",
    "parsed": True,
    "reward_ndcg@10": 0.61,
    "raw_query_ndcg@10": 0.52,
    "estimator": "shapley",
    "coalitions_evaluated": 8,
    "segments": [
        {"text": "4 ports,", "start": 0, "end": 8, "attribution": 0.08},
        {"text": "hdmi adapter,", "start": 9, "end": 22, "attribution": 0.03},
        {"text": "red", "start": 23, "end": 26, "attribution": -0.02},
    ],
    "efficiency_gap": 0.0,
}


def test_attribution_colours_follow_the_sign_and_size_of_each_phrase(console: Page) -> None:
    """The renderer on a stored explain answer: sign -> hue, |value| -> depth, value on hover,
    the added text reproduced exactly."""
    signed_in(console)
    console.page.evaluate(
        """async (ex) => {
            const { renderExplanation } = await import('/console/js/attribution.js');
            const slot = document.createElement('section');
            slot.id = 'stored-explain';
            slot.className = 'panel';
            slot.append(renderExplanation(ex));
            document.querySelector('#tab-search').prepend(slot);
        }""",
        STORED_EXPLAIN,
    )
    pairs = _colour(console.page, "#stored-explain .seg")
    assert [v for v, _ in pairs] == [0.08, 0.03, -0.02]
    _check_colours(pairs)
    strong, weak = _rgb(pairs[0][1]), _rgb(pairs[1][1])
    assert sum(strong) < sum(weak)  # the larger value is the deeper green
    line = console.text("#stored-explain .attributed")
    assert line == STORED_EXPLAIN["expansion"]
    titles = console.page.eval_on_selector_all(
        "#stored-explain .seg", "els => els.map(e => e.title)"
    )
    assert titles == ["+0.0800 NDCG@10", "+0.0300 NDCG@10", "−0.0200 NDCG@10"]
    console.page.locator("#stored-explain").screenshot(
        path=str(console.shots / "attribution-stored.png")
    )
    print(f"screenshot: {console.shots / 'attribution-stored.png'}")


STORED_FACETS = {
    "facets": {"brand": [{"value": "Acme", "count": 7}, {"value": "Globex", "count": 3}]},
    "facet_stats": {"price": {"min": 12.5, "max": 89.99, "count": 38}},
}


def test_facets_panel_shows_the_price_range_of_the_candidates(console: Page) -> None:
    """`facet_stats.price` (the sample catalogue has no prices, so a stored answer): its
    min–max and count are shown, and the brand values stay buttons that filter."""
    signed_in(console)
    console.page.evaluate(
        """async (res) => {
            const { renderFacets } = await import('/console/js/search.js');
            window.facetClicks = [];
            const panel = renderFacets(res, (f, v) => window.facetClicks.push([f, v]));
            panel.id = 'stored-facets';
            document.querySelector('#tab-search').prepend(panel);
        }""",
        STORED_FACETS,
    )
    price = console.text('#stored-facets [data-stat="price"]')
    assert "12.50 – 89.99" in price and "38 of the candidates have a price" in price
    brand = console.page.locator("#stored-facets .facet").first
    assert brand.locator("h4").inner_text().lower() == "brand"
    assert brand.locator("button.link").all_inner_texts() == ["Acme", "Globex"]
    brand.locator("button.link").nth(1).click()
    assert console.page.evaluate("window.facetClicks") == [["brand", "Globex"]]
    console.page.locator("#stored-facets").screenshot(path=str(console.shots / "facets-stored.png"))
    print(f"screenshot: {console.shots / 'facets-stored.png'}")
