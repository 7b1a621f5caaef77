"""Real child processes for integration tests: the API server, Celery workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from service.processes import signal_group, stop_group

ROOT = Path(__file__).resolve().parents[1]
OSPO = str(Path(sys.executable).with_name("ospo"))


class Child:
    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        signal_group(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.proc, timeout)
        self._fh.close()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


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
