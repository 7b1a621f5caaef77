"""Stopping a child that runs in its own process group, and everything it spawned.

Children are started with `start_new_session=True`, so the child's pid is its group id and one
signal reaches the grandchildren too (vLLM's engine core and workers, uvicorn's and Celery's
workers). One stop for every caller: the supervisor of `make up`, the vLLM server wrapper, the
test and benchmark harnesses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to the group; a group already gone (or not ours) is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_gone(pgid: int, timeout: float) -> bool:
    """True once no process of group `pgid` is left (signal 0 probes without signalling)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM the group, wait up to `timeout` for the leader, then give the rest of the group a
    moment to finish its own shutdown and SIGKILL whatever is left. Returns the exit code."""
    pgid = process.pid
    if process.poll() is None:
        signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    # Grandchildren may outlive the leader (vLLM's engine core): they get 5 s more.
    if not group_gone(pgid, timeout=5.0):
        signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    return process.returncode
