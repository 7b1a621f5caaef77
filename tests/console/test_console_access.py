"""The console's front door in a real browser (fixtures: conftest.py): its files
and their Content-Security-Policy, and signing in with the admin key."""

from __future__ import annotations

import httpx
import pytest

from tests.console.page import KEY, Page

pytestmark = [pytest.mark.slow]


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
