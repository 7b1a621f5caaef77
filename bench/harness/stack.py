"""Starting the stack a benchmark measures: real processes, each in a process group of its own.

Every child is a ``service.processes.GroupChild`` (the supervisor's and the tests' stop: SIGTERM
to the group, SIGKILL to what is left), its output appended to a log file whose tail goes into
the error when it fails to start. ``ospo`` commands get this environment minus every
``OSPO_*`` variable, plus the benchmark's own: a developer's exported settings never leak into a
measurement. They run from the repository root unless a benchmark gives another folder (the
serving benchmark runs them in its work folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx

from service.policy.server import free_port
from service.processes import GroupChild

ROOT = Path(__file__).resolve().parents[2]
OSPO = str(Path(sys.executable).with_name("ospo"))


def project_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without OSPO_* settings, then `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
    return {**clean, **env}


class Ospo(GroupChild):
    """``ospo ARGS`` with `env` as its only OSPO_* settings."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = ROOT
    ) -> None:
        super().__init__([OSPO, *args], project_env(env), log_path, cwd)


class Api(Ospo):
    """``ospo serve`` (uvicorn, `workers` processes) on a free loopback port."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, workers: int = 1, cwd: Path = ROOT
    ) -> None:
        self.port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__([*args, "--workers", str(workers)], env, log_path, cwd)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str = "/readyz", timeout: float = 300.0) -> float:
        """Seconds until `path` answers 200 (``/readyz``: index loaded, database reachable)."""
        return wait_http(self.url + path, self, timeout)


@contextlib.contextmanager
def running_api(
    env: Mapping[str, str], log_path: Path, workers: int = 1, cwd: Path = ROOT
) -> Iterator[Api]:
    """An `Api`, ready, stopped on the way out."""
    api = Api(env, log_path, workers, cwd)
    try:
        api.wait_ready()
        yield api
    finally:
        api.stop()


class Worker(Ospo):
    """``ospo worker`` (Celery), on `queues` when given."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        queues: str | None = None,
        concurrency: int | None = None,
        cwd: Path = ROOT,
    ) -> None:
        args = ["worker"]
        args += ["--queues", queues] if queues else []
        args += ["--concurrency", str(concurrency)] if concurrency else []
        super().__init__(args, env, log_path, cwd)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until Celery logs ``ready.`` (connected to the broker, consuming its queues)."""
        deadline = time.monotonic() + timeout
        while "ready." not in self.log_path.read_text(errors="replace"):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{self.tail(40)}")
            time.sleep(0.5)


def wait_http(url: str, child: GroupChild, timeout: float = 300.0) -> float:
    """Seconds until `url` answers 200; fails at once, with the log's tail, if `child` exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not child.alive():
            raise RuntimeError(f"exited before {url} answered:\n{child.tail(40)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{child.tail(40)}")


def redis_server(port: int, log_path: Path) -> GroupChild:
    """A private ``redis-server`` (no persistence) on `port`, answering PING."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = GroupChild([*argv, "--appendonly", "no"], project_env({}), log_path, ROOT)
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if ping.stdout.strip() == b"PONG":
            return proc
        time.sleep(0.1)
    raise RuntimeError(f"private Redis did not start:\n{proc.tail(20)}")


def private_postgres(port: int, root: Path) -> tuple[GroupChild, str]:
    """A PostgreSQL server of its own (initdb under `root`, run as the ``postgres`` user) and
    its URL: killing it disturbs nobody else's databases."""
    bindir = Path("/usr/lib/postgresql") / sorted(os.listdir("/usr/lib/postgresql"))[-1] / "bin"
    data, sockets = root / "pgdata", root / "pgsock"
    for d in (root, sockets):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "postgres", "postgres")
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    subprocess.run([*as_postgres, *initdb], check=True, capture_output=True, timeout=300)
    server = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    server += ["-c", "listen_addresses=127.0.0.1", "-k", str(sockets)]
    proc = GroupChild([*as_postgres, *server], project_env({}), root / "postgres.log", ROOT)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    wait_postgres(url, proc)
    return proc, url


def wait_postgres(url: str, child: GroupChild, timeout: float = 120.0) -> None:
    """Until PostgreSQL at `url` accepts a connection (after a start or a crash recovery)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"PostgreSQL exited:\n{child.tail(20)}")
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not start:\n{child.tail(20)}") from None
            time.sleep(0.2)


def postgres_schema(server_url: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """A fresh schema on the shared PostgreSQL server: a URL whose search_path is that schema,
    and the function that drops it. Other work on the server never sees the benchmark's rows."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{server_url}?options=-csearch_path%3D{schema}", drop


def stop_children_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: through the ``finally`` blocks that stop the children."""

    def _raise(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _raise)
