"""Stopping a child that runs in its own process group, and everything it spawned.

Children are started with `start_new_session=True`, so the child's pid is its group id and one
signal reaches the grandchildren too (vLLM's engine core and workers, uvicorn's and Celery's
workers). One stop for every caller: the supervisor of `make up`, the vLLM server wrapper, and
`GroupChild`, the test and benchmark harness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


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


class GroupChild:
    """A command started in a session (process group) of its own, its output appended to
    `log_path`, stopped with everything it spawned. `env` is the child's whole environment
    (callers decide what to inherit). The harness of the tests and benchmarks."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.argv, self.env, self.log_path, self.cwd = argv, env, log_path, cwd
        self.proc: subprocess.Popen[bytes]
        self.start()

    def start(self) -> None:
        """Start the command (again, after `kill`: a restart under the same settings)."""
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL, sessions: bool = False) -> None:
        """Signal the group; `sessions`: also the groups of its direct children, for commands
        that start their own sessions (`ospo policy serve` runs vLLM in one)."""
        if sessions:
            for pid in _children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    signal_group(os.getpgid(pid), sig)
        signal_group(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        return stop_group(self.proc, timeout)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found
