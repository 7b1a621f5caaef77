"""The web console in a real browser: Playwright driving Debian's Chromium against a real
`ospo serve` process (SQLite, the 392-product ESCI index, no policy) with a known admin key.

Seeded through the repositories the way the trainer writes them: the ESCI products and labels
(explain needs judged queries), three adapters (candidate, retired, rejected: none active, so
explain rewrites with the base model), two finished runs whose `metrics.steps` rows have the
trainer's metrics.jsonl shape and whose gate is `trainer.gate.gate_decision`'s real output.
Searches and events go through the API, as a storefront sends them.

Each test drives one tab and asserts on what the page shows (text, attributes, element counts,
never pixels), and saves a screenshot under the test output (`OSPO_TEST_OUTPUT/console/` when
set, else pytest's tmp folder; the paths are printed). A page that throws, violates its
Content-Security-Policy or requests anything off the API's origin fails the test.

The attribution colours are real when the policy model is prepared: `test_search_tab...` starts
an `ospo worker` (SQLite broker, no Redis) for the length of that test only, so "train now"
in the runs test queues a run no worker trains (and the test marks it failed afterwards, so a
later worker would skip it). The colour rule itself is also checked on a stored explain answer
with known positive, negative and zero values.

The comparisons test (last in the file, so no earlier test sees its adapters or its running
comparison) seeds two interleaved comparisons the way the update task and beat make them
(`start_comparison` and `decide_running` with the server's settings), their interleaved
searches written as the search log writes them and the shoppers' clicks sent through the API;
it aborts the running one from the page.

Skipped, with the reason printed, only when Chromium or Playwright is missing or does not
start (`apt-get install chromium`; Playwright cannot download its own browser here).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from service.adapters.registry import register_adapter
from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Adapter, utcnow
from service.policy.server import free_port
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products
from service.repositories.runs import create_run, finish_run, get_run
from service.repositories.searches import add_searches
from service.services.comparisons import decide_running, start_comparison
from service.settings import Settings
from service.workers import live_queues
from tests.processes import OSPO, Child, wait_http, wait_until

pytestmark = [pytest.mark.slow]

KEY = "console-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = os.environ.get("OSPO_TEST_CHROMIUM", "/usr/bin/chromium")
# Judged in the ESCI sample (15 labels); the base model's greedy rewrite of it adds phrases that
# help and phrases that hurt, which makes the screenshot worth reading (docs/console.png).
EXPLAIN_QUERY = "computers"
EXPLAIN_TIMEOUT_S = 420  # worker start, policy load and the coalitions, on 2 busy CPU cores
UI_TIMEOUT_MS = 30_000


# ---------------------------------------------------------------------------------- seeding


def _steps(n: int) -> list[dict]:
    """Rows shaped like trainer/train.py's metrics.jsonl: a warm-start row, a step-0
    validation row, then one row per step (val_ndcg every 5 steps)."""
    rows: list[dict] = [
        {"step": 0, "phase": "warm_start", "kept": 3},
        {"step": 0, "val_ndcg": 0.41},
    ]
    for step in range(1, n + 1):
        row = {
            "step": step,
            "reward_mean": 0.35 + 0.02 * step,
            "reward_std": 0.05,
            "ndcg": 0.33 + 0.018 * step,
            "loss": 0.1 / step,
            "parse_rate": 1.0,
        }
        if step % 5 == 0:
            row["val_ndcg"] = 0.41 + 0.01 * step
        rows.append(row)
    return rows


def _seed_registry(url: str) -> dict[str, str]:
    from trainer.gate import gate_decision

    passed = gate_decision([0.62, 0.55, 0.71, 0.60], [0.50, 0.41, 0.58, 0.49], None)
    failed = gate_decision([0.50, 0.40, 0.57, 0.48], [0.50, 0.41, 0.58, 0.49], None)
    assert passed["passed"] and not failed["passed"]
    now = utcnow()
    with session_scope(url) as s:
        promoted = create_run(s, "ospo", {"overrides": {"steps": 12}})
        rejected = create_run(s, "grpo", {"overrides": {}})
        ids = {"promoted": promoted.id, "rejected": rejected.id}
        for name, status, parent, gate in [
            ("ospo-20250101-000000-aaaa", "retired", None, passed),
            ("ospo-20250102-000000-bbbb", "candidate", "ospo-20250101-000000-aaaa", passed),
            ("grpo-20250103-000000-cccc", "rejected", "ospo-20250101-000000-aaaa", failed),
        ]:
            s.add(Adapter(
                name=name, path=f"/nonexistent/{name}", checksum="0" * 64,
                base_model="smollm2-135m-instruct", parent=parent, status=status,
                metrics={"gate": gate, "canary": {"ok": True, "latency_ms": 120.0,
                                                  "rewrite": "ceramic coffee mug"}},
                activated_at=now - timedelta(days=1) if status == "retired" else None,
                retired_at=now if status == "retired" else None,
            ))  # fmt: skip
    with session_scope(url) as s:
        for run_id, status, adapter, gate in [
            (ids["promoted"], "promoted", "ospo-20250102-000000-bbbb", passed),
            (ids["rejected"], "rejected", "grpo-20250103-000000-cccc", failed),
        ]:
            finish_run(
                s, run_id, status, adapter=adapter,
                metrics={"steps": _steps(12), "gate": gate, "adapter": adapter,
                         "labelled_queries": 39, "train_queries": 31},
            )  # fmt: skip
            run = get_run(s, run_id)
            assert run is not None
            run.started_at = run.finished_at - timedelta(minutes=3)
    return ids


def _seed_traffic(base: str, url: str) -> None:
    """Searches and events through the API, and one search that showed nothing (written the
    way the search log writes rows, since no query of this catalogue returns nothing)."""
    with httpx.Client(base_url=base, timeout=60) as c:
        for query in ["6 dining chairs", "6 dining chairs", "plants", "plants", "computers"]:
            r = c.post("/v1/search", json={"query": query, "k": 5})
            assert r.status_code == 200, r.text
            answer = r.json()
            if query == "plants":
                events = [
                    {"event_id": str(uuid.uuid4()), "search_id": answer["search_id"],
                     "product_id": answer["results"][1]["product_id"], "type": kind}
                    for kind in ("click", "add_to_cart")
                ]  # fmt: skip
                assert c.post("/v1/events", json=events).status_code == 200
    with session_scope(url) as s:
        add_searches(s, [{
            "id": str(uuid.uuid4()), "query": "zzqx nothing", "normalized_query": "zzqx nothing",
            "rewrite": "zzqx nothing", "rewrite_source": "none", "adapter": None, "k": 5,
            "product_ids": [], "scores": [], "latency_ms": 3.0,
        }])  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_index_root: Path, esci_records):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("console-server")
    shutil.copytree(small_index_root, data / "indexes")
    url = f"sqlite:///{data / 'ospo.db'}"
    upgrade(url)
    with session_scope(url) as s:
        upsert_products(s, [p for p, _ in esci_records if p is not None])
        upsert_labels(s, [lab for _, lab in esci_records if lab is not None])
    runs = _seed_registry(url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OSPO_")},
        "OSPO_DATA_DIR": str(data),
        "OSPO_POLICY_BACKEND": "none",
        "OSPO_ADMIN_API_KEY": KEY,
        "OSPO_RATE_LIMIT_SEARCH": "",
        "OSPO_RATE_LIMIT_EVENTS": "",
        "OSPO_WORKER_TIMEOUT_S": str(EXPLAIN_TIMEOUT_S),
        "OSPO_SHUTDOWN_GRACE_S": "2",
        "OSPO_SEARCH_LOG_BACKGROUND": "false",
    }
    port = free_port()
    child = Child([OSPO, "serve", "--port", str(port)], env, data / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", child)
        _seed_traffic(base, url)
        yield {"base": base, "url": url, "env": env, "data": data, "runs": runs}
    finally:
        child.stop()


# ---------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        print(f"SKIP: playwright is not installed: {e}")
        pytest.skip(f"playwright is not installed: {e}")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as e:  # noqa: BLE001 - any launch failure is a skip reason
            print(f"SKIP: Chromium at {CHROMIUM} did not start: {e}")
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {e}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: $OSPO_TEST_OUTPUT/console, else a pytest tmp folder."""
    root = os.environ.get("OSPO_TEST_OUTPUT")
    folder = Path(root) / "console" if root else tmp_path_factory.mktemp("console-shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """A browser tab on the console that records what must never happen: script errors, CSP
    violations, requests to anything but the API's own origin."""

    def __init__(self, browser, base: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
        self.base, self.shots = base, shots
        self.context = browser.new_context(viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.accept_dialogs = True
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        self.page.on("dialog", self._dialog)

    def _console(self, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.problems.append(f"console error: {msg.text}")

    def _request(self, request) -> None:  # type: ignore[no-untyped-def]
        if not (request.url.startswith(self.base + "/") or request.url.startswith("data:")):
            self.problems.append(f"off-origin request: {request.url}")

    def _dialog(self, dialog) -> None:  # type: ignore[no-untyped-def]
        self.dialogs.append(dialog.message)
        if self.accept_dialogs:
            dialog.accept()
        else:
            dialog.dismiss()

    def login(self, key: str = KEY) -> None:
        self.page.goto(f"{self.base}/console/")
        self.page.fill("#admin-key", key)
        self.page.click("#login-form button[type=submit]")

    def tab(self, name: str) -> None:
        self.page.click(f"nav#tabs a[data-tab={name}]")
        self.page.wait_for_selector(f"#tab-{name}:not([hidden])", timeout=UI_TIMEOUT_MS)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text(timeout=UI_TIMEOUT_MS)

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def console(browser, server, shots) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    page = Page(browser, server["base"], shots)
    page.page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    page.close()


def _signed_in(console: Page) -> None:
    console.login()
    console.page.wait_for_selector("nav#tabs:not([hidden])")


# ---------------------------------------------------------------------------------- tests


def test_console_files_are_served_with_a_policy_that_forbids_other_origins(server) -> None:  # type: ignore[no-untyped-def]
    base = server["base"]
    moved = httpx.get(f"{base}/console", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/console/"
    page = httpx.get(f"{base}/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    js = httpx.get(f"{base}/console/js/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    # no file outside the console's own folder, however the path is spelled
    for path in ["/console/../pyproject.toml", "/console/%2e%2e/service/settings.py",
                 "/console/js/none.js", "/console/__init__.py"]:  # fmt: skip
        assert httpx.get(f"{base}{path}").status_code == 404, path
    # the page holds no data: every figure needs the key
    assert httpx.get(f"{base}/admin/adapters").status_code == 401


def test_a_wrong_key_is_refused_with_a_message_and_the_right_one_signs_in(console: Page) -> None:
    console.login("not-the-key")
    console.page.wait_for_selector("#login-error .msg-error")
    assert "refused (401)" in console.text("#login-error")
    assert console.page.locator("nav#tabs").is_hidden()
    assert console.page.evaluate("sessionStorage.length") == 0
    console.shot("login-refused")

    console.login()
    console.page.wait_for_selector("nav#tabs:not([hidden])")
    assert console.page.evaluate("Object.values(sessionStorage)") == [KEY]
    # a reload keeps the session (the key is in this tab's sessionStorage)
    console.page.reload()
    console.page.wait_for_selector("#tab-search:not([hidden])")
    # a key rotated under a signed-in page: the next call's 401 returns to the login form
    console.page.evaluate("sessionStorage.setItem('ospo.console.adminKey', 'rotated')")
    console.page.click("nav#tabs a[data-tab=adapters]")
    console.page.wait_for_selector("#login:not([hidden]) .msg-error")
    assert "refused" in console.text("#login-error")
    assert console.page.evaluate("sessionStorage.length") == 0


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
        _signed_in(console)
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
    _signed_in(console)
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
    _signed_in(console)
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
    _signed_in(console)
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


def test_adapters_tab_lists_the_registry_and_confirms_promote_and_rollback(console: Page) -> None:
    _signed_in(console)
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
    _signed_in(console)
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
    _signed_in(console)
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
    _signed_in(console)
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


# ---------------------------------------------------------------------------------- comparisons

LOST_CANDIDATE = "ospo-20250104-000000-dddd"
RUNNING_CANDIDATE = "ospo-20250105-000000-eeee"
TEAMS = ["c", "b", "c", "b"]  # who contributed each of the four shown products
# Positions the shopper clicked in each interleaved search: position 1 is the candidate's
# product, 2 the baseline's; both is a tie; None shows an impression only (no information).
WIN, LOSS, TIE, NOTHING = (1,), (2,), (1, 2), None


def _comparing_run(settings: Settings, candidate: str, data: Path) -> tuple[str, str]:
    """A registered candidate (placeholder files: nothing loads them here), its run in
    `comparing` and its comparison against the raw query, as trainer/update.py leaves them."""
    url = settings.resolved_database_url
    src = data / f"src-{candidate}"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(candidate.encode())
    register_adapter(url, settings.adapters_dir, candidate, src, "smollm2-135m-instruct")
    with session_scope(url) as s:
        run_id = create_run(s, "ospo", {"overrides": {}}).id
    comparison_id = start_comparison(settings, run_id, candidate, None)
    from trainer.gate import gate_decision

    passed = gate_decision([0.66, 0.58, 0.73, 0.61], [0.50, 0.41, 0.58, 0.49], None)
    with session_scope(url) as s:
        finish_run(s, run_id, "comparing", adapter=candidate,
                   metrics={"steps": _steps(12), "gate": passed, "adapter": candidate,
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

        _signed_in(console)
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
