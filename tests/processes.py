"""Real child processes for integration tests: the API server, Celery workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from service.processes import GroupChild

ROOT = Path(__file__).resolve().parents[1]
OSPO = str(Path(sys.executable).with_name("ospo"))


class Child(GroupChild):
    """A project command for a test: this environment plus `env`, run from the repository."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        super().__init__(argv, {**os.environ, **env}, log, cwd=ROOT)

    def stop(self, timeout: float = 20.0) -> int | None:
        return super().stop(timeout)


def wait_http(url: str, child: Child, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"process died before {url} answered:\n{child.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{child.tail()}")


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s (last: {last!r})")


def run_script_without(
    script: str, args: list[str], absent: tuple[str, ...], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args`` in a child Python and fail the child if it exited non-zero
    or imported any module named in ``absent`` (or below it): a benchmark meant for a machine
    that lacks those packages proves here that it never needs them."""
    code = f"""
import runpy, sys
sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
loaded = [m for m in sys.modules if any(m == s or m.startswith(s + ".") for s in {absent!r})]
assert not loaded, loaded
"""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
