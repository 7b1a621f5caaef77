"""Run the processes of `make up` together and stop them together.

Each child gets its own process group (vLLM spawns engine processes of its own); Ctrl-C or
SIGTERM stops every group, and if one child exits the others are stopped too, so `make up`
never leaves half a system running.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from service.processes import signal_group, stop_group

console = Console(stderr=True)


class Supervisor:
    def __init__(self, commands: list[tuple[str, list[str]]], log_dir: Path) -> None:
        self.commands = commands
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _argv(self, argv: list[str]) -> list[str]:
        if argv[0] == "ospo":
            exe = shutil.which("ospo") or str(Path(sys.executable).with_name("ospo"))
            return [exe, *argv[1:]]
        return argv

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, argv in self.commands:
            log = (self.log_dir / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                self._argv(argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            console.print(
                f"started {name} (pid {self.procs[name].pid}), log: {self.log_dir / f'{name}.log'}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True  # a signal from now on is no news (see run's handler)
        # SIGTERM every group first so they shut down in parallel, then collect each.
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                console.print(f"stopping {name}")
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            stop_group(proc, max(0.1, deadline - time.monotonic()))

    def run(self) -> int:
        def _on_signal(signum: int, _frame: object) -> None:
            # Once only: `make up` forwards its own SIGTERM to us, so a group kill arrives
            # twice, and a second interrupt inside stop() would orphan the children.
            if not self._stopping:
                self._stopping = True
                raise KeyboardInterrupt

        # SIGINT explicitly too: a shell starting `make up` in the background leaves SIGINT
        # ignored, and Python then never raises KeyboardInterrupt on its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
        self.start()
        code = 0
        try:
            while True:
                for name, proc in self.procs.items():
                    rc = proc.poll()
                    if rc is not None:
                        console.print(
                            f"[red]{name} exited with {rc}[/red]; stopping the others "
                            f"(see {self.log_dir / f'{name}.log'})"
                        )
                        code = rc or 1
                        raise KeyboardInterrupt
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        return code
