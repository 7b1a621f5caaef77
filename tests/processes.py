"""Real child processes for integration tests: the API server, Celery workers."""

from __future__ import annotations

import os
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
