"""The API against its own OpenAPI document, and its shutdown with a request in flight.

A real `ospo serve` process (no policy, no worker, SQLite) is fuzzed by schemathesis with every
check on a short budget (`bench/conformance.py` runs the long one): no server error, every
status code, content type and header documented, every schema-valid request served or refused
with a documented status — no operation and no check left out. `/admin/explain` waits on a
worker this test does not run, so its designed answer is a 503 with Retry-After at once,
checked on its own too, with a shutdown under a request in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from service.db.migrate import upgrade
from service.policy.server import free_port
from tests.processes import Child, wait_http

ST = str(Path(sys.executable).with_name("st"))
KEY = "conformance-admin-key-0123456789"
CONFIG = Path(__file__).with_name("conformance.toml")  # explain's 503 without a worker
EXAMPLES_PER_OPERATION = 6  # CI budget; bench/conformance.py uses 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_index_root: Path):
    data = tmp_path_factory.mktemp("conformance")
    shutil.copytree(small_index_root, data / "indexes")
    upgrade(f"sqlite:///{data / 'ospo.db'}")
    port = free_port()
    env = {
        "OSPO_DATA_DIR": str(data),
        "OSPO_POLICY_BACKEND": "none",
        "OSPO_ADMIN_API_KEY": KEY,
        "OSPO_RATE_LIMIT_SEARCH": "",
        "OSPO_RATE_LIMIT_EVENTS": "",
        "OSPO_WORKER_TIMEOUT_S": "3",
        "OSPO_SHUTDOWN_GRACE_S": "2",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
    child = Child(
        [str(Path(sys.executable).with_name("ospo")), "serve", "--port", str(port)],
        {**clean, **env},
        data / "api.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", child)
    yield url, child
    child.stop()


def _schemathesis(url: str, *options: str) -> None:
    run = subprocess.run(
        [
            ST, "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
            "--header", f"Authorization: Bearer {KEY}",
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", "0",
            *options,
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_schemathesis_finds_no_failure(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    _schemathesis(url, "--checks", "all")


def test_explain_without_a_worker_is_a_503_with_retry_after_and_shutdown_does_not_wait(
    server,
) -> None:  # type: ignore[no-untyped-def]
    url, child = server
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{url}/admin/explain", params={"query": "usb hub"}, headers=auth, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker"
    assert int(r.headers["Retry-After"]) > 0 and "ospo worker" in r.json()["error"]["message"]
    # A request in flight when SIGTERM arrives: the process still exits (grace 2 s).
    answers: list[int | str] = []

    def in_flight() -> None:
        try:
            answers.append(
                httpx.get(
                    f"{url}/admin/explain", params={"query": "mug"}, headers=auth, timeout=30
                ).status_code  # fmt: skip
            )
        except httpx.HTTPError as e:
            answers.append(type(e).__name__)

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_until_listening = httpx.get(f"{url}/healthz", timeout=5)
    assert wait_until_listening.status_code == 200
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=30) is not None  # exits: the grace period bounds shutdown
    thread.join(timeout=30)
    assert answers, "the in-flight request got no outcome"
