"""The web console in a real browser: Playwright driving Debian's Chromium against a real
`ospo serve` (fixtures in conftest.py, the browser tab in page.py), one module per area."""
