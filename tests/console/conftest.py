"""The console tests' fixtures (tests/console/test_console_*.py): a real `ospo serve` process
(SQLite, the 392-product ESCI index, no policy) with a known admin key, Debian's Chromium
driven by Playwright, and a `Page` (page.py) on the console that fails its test on anything
that must never happen.

Each test module gets its own server (module-scoped fixtures): its tests share one state, and
no module sees another's changes. The server holds the ESCI products and labels (explain needs
judged queries) and what seed.py writes: a registry and traffic.

Each test drives one tab and asserts on what the page shows (text, attributes, element counts,
never pixels), and saves a screenshot under the test output (`OSPO_TEST_OUTPUT/console/` when
set, else pytest's tmp folder; the paths are printed). A page that throws, violates its
Content-Security-Policy or requests anything off the API's origin fails the test.

Skipped, with the reason printed, only when Chromium or Playwright is missing or does not
start (`apt-get install chromium`; Playwright cannot download its own browser here).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.policy.server import free_port
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products
from tests.console.page import CHROMIUM, EXPLAIN_TIMEOUT_S, KEY, UI_TIMEOUT_MS, Page
from tests.console.seed import seed_registry, seed_traffic
from tests.processes import OSPO, Child, wait_http

# ---------------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_index_root: Path, esci_records):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("console-server")
    shutil.copytree(small_index_root, data / "indexes")
    url = f"sqlite:///{data / 'ospo.db'}"
    upgrade(url)
    with session_scope(url) as s:
        upsert_products(s, [p for p, _ in esci_records if p is not None])
        upsert_labels(s, [lab for _, lab in esci_records if lab is not None])
    runs = seed_registry(url)
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
        seed_traffic(base, url)
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


@pytest.fixture
def console(browser, server, shots) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    page = Page(browser, server["base"], shots)
    page.page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    page.close()
