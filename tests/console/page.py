"""The console tests' browser tab (tests/console/): a `Page` that records what must never
happen — script errors, Content-Security-Policy violations, requests off the API's origin —
and fails its test on close; the admin key and the timeouts the tests share."""

from __future__ import annotations

import os
from pathlib import Path

KEY = "console-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = os.environ.get("OSPO_TEST_CHROMIUM", "/usr/bin/chromium")
# Judged in the ESCI sample (15 labels); the base model's greedy rewrite of it adds phrases that
# help and phrases that hurt, which makes the screenshot worth reading (docs/console.png).
EXPLAIN_QUERY = "computers"
EXPLAIN_TIMEOUT_S = 420  # worker start, policy load and the coalitions, on 2 busy CPU cores
UI_TIMEOUT_MS = 30_000


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


def signed_in(console: Page) -> None:
    console.login()
    console.page.wait_for_selector("nav#tabs:not([hidden])")
