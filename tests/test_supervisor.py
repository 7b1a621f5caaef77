"""`ospo up`'s supervisor: one signal stops every child; one child dying stops the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _supervise(tmp_path: Path, commands: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from pathlib import Path; from service.supervisor import Supervisor; "
        f"sys.exit(Supervisor({commands}, Path({str(tmp_path)!r})).run())"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def _children_pids(tmp_path: Path, proc: subprocess.Popen[bytes], n: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if len(pids) == n:
            return pids
        time.sleep(0.2)
    raise AssertionError("children did not start")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie not yet reaped by its parent counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_signal_stops_all_children(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, f"[('a', {SLEEPER!r}), ('b', {SLEEPER!r})]")
    pids = _children_pids(tmp_path, proc, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert all(_gone(p) for p in pids)
    assert (tmp_path / "a.log").exists() and (tmp_path / "b.log").exists()


def test_one_child_exiting_stops_the_others(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(3)"]
    proc = _supervise(tmp_path, f"[('ok', {SLEEPER!r}), ('bad', {failing!r})]")
    pids = _children_pids(tmp_path, proc, 2)
    assert proc.wait(30) == 3
    assert all(_gone(p) for p in pids)
    assert b"bad exited with 3" in proc.stdout.read()


def test_a_second_signal_while_stopping_still_stops_everyone(tmp_path: Path) -> None:
    """`make up` forwards its own SIGTERM, so a group kill reaches the supervisor twice: the
    second one, arriving while it waits for slow children, must not cut the stop short."""
    slow = [sys.executable, "-c", "import signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0))); "
            "time.sleep(120)"]  # fmt: skip
    proc = _supervise(tmp_path, f"[('a', {slow!r}), ('b', {slow!r})]")
    pids = _children_pids(tmp_path, proc, 2)
    time.sleep(0.5)  # the children have installed their handlers
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the supervisor is now waiting for them
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stdout.read()
    assert all(_gone(p) for p in pids)
