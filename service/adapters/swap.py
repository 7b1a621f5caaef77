"""Hot-swapping LoRA adapters in the policy server without failing a request.

Activation (`activate`): load the adapter into the policy server under its own unique name,
check that the server lists it, run a canary rewrite through it, warm the rewrite store with
its rewrites of the head queries (`service.rewriting.warmup`; until done or its time limit),
and only then flip the active pointer in the database in one transaction. Every API process
runs an `ActiveAdapterWatcher` that reads the pointer every `adapter_poll_s` and preloads the
new adapter's stored rewrites before switching, so all of them serve its warmed rewrites
within one poll interval. The
previous adapter stays loaded for an instant rollback; older ones are unloaded once no request
of this process is using them and a grace period has passed (other processes switch too).
After a policy-server restart the watcher finds the active adapter missing and loads it again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread

from service.adapters.registry import verify_files
from service.background import BackgroundLoop
from service.db.engine import session_scope
from service.domain import AdapterStatus
from service.errors import Conflict, NotFound, Unavailable
from service.observability import REWRITE_WARMUP
from service.policy.prompt import DEFAULT_PROMPT
from service.policy.protocol import Policy, PolicyError
from service.policy.retry import until_reachable
from service.repositories.adapters import (
    active_adapter,
    get_adapter,
    list_adapters,
    previous_adapter,
    set_active,
    set_status,
)
from service.rewriting.warmup import WarmupConfig, warm

log = logging.getLogger(__name__)

CANARY_QUERY = "usb c charging cable"


@dataclass
class SwapResult:
    active: str | None
    previous: str | None
    seconds: float
    canary: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] | None = None


async def ensure_loaded(policy: Policy, name: str, path: str) -> set[str]:
    """Load `name` unless the server lists it already; returns what the server has loaded."""
    loaded = set(await policy.list_models())
    if name in loaded:
        return loaded
    await policy.load_adapter(name, path)
    loaded = set(await policy.list_models())
    if name not in loaded:
        raise PolicyError(f"adapter {name} was loaded but the policy server does not list it")
    return loaded


async def activate(
    policy: Policy,
    database_url: str,
    name: str,
    warmup: WarmupConfig | None = None,
    prompt_version: str = DEFAULT_PROMPT.version,
    wait_s: float = 0.0,
) -> SwapResult:
    """Load, verify, canary, warm (when `warmup` is given), flip. Raises (and leaves the active
    pointer as it was) on failure. A policy server that cannot be reached is waited for up to
    `wait_s` (a worker's promotion: it may be starting), with backoff."""
    started = time.perf_counter()

    def _row():  # type: ignore[no-untyped-def]
        with session_scope(database_url) as s:
            row = get_adapter(s, name)
            if row is None:
                raise NotFound(f"no adapter named {name!r}")
            if row.status == AdapterStatus.rejected:
                raise Conflict(f"adapter {name!r} was rejected by the gate; promote refused")
            return row

    row = await to_thread.run_sync(_row)
    path = await to_thread.run_sync(verify_files, row)
    try:
        async for attempt in until_reachable(wait_s):
            with attempt:
                await ensure_loaded(policy, name, str(path))
                canary = await policy.rewrite(CANARY_QUERY, adapter=name)
    except PolicyError as e:
        raise Unavailable(f"adapter {name!r} could not be served: {e}") from e
    canary_info = {
        "query": CANARY_QUERY,
        "rewrite": canary.text,
        "ok": canary.ok,
        "latency_ms": round(canary.latency_ms, 1),
    }
    log.info("canary for %s: %r", name, canary_info)
    progress = (
        await warm(
            policy,
            database_url,
            name,
            prompt_version,
            warmup,
            reload=lambda: ensure_loaded(policy, name, str(path)),
        )
        if warmup
        else None
    )

    def _flip() -> str | None:
        with session_scope(database_url) as s:
            previous = set_active(s, name)
            set_status(s, name, AdapterStatus.active, {"canary": canary_info})
            return previous

    previous = await to_thread.run_sync(_flip)
    return SwapResult(name, previous, time.perf_counter() - started, canary_info, progress)


async def rollback(policy: Policy, database_url: str) -> SwapResult:
    """Serve the adapter that served before the current one (or the base model if none)."""

    def _previous() -> str | None:
        with session_scope(database_url) as s:
            prev = previous_adapter(s)
            return prev.name if prev else None

    target = await to_thread.run_sync(_previous)
    if target is not None:
        return await activate(policy, database_url, target)
    started = time.perf_counter()

    def _to_base() -> str | None:
        with session_scope(database_url) as s:
            return set_active(s, None)

    previous = await to_thread.run_sync(_to_base)
    if previous is None:
        raise Conflict("nothing to roll back: no adapter is active")
    return SwapResult(None, previous, time.perf_counter() - started)


class ActiveAdapterWatcher:
    """This process's view of the active adapter, and the in-flight requests per adapter."""

    def __init__(
        self,
        policy: Policy,
        database_url: str,
        interval_s: float = 2.0,
        unload_grace_s: float = 30.0,
    ) -> None:
        self.policy = policy
        self.database_url = database_url
        self.interval_s = interval_s
        self.unload_grace_s = unload_grace_s
        self.current: str | None = None
        self.inflight: Counter[str] = Counter()
        self.last_error: str | None = None
        self.warmup: dict[str, Any] | None = None  # the latest warm-up's progress, any adapter
        # Awaited with the new adapter before this process switches to it (the rewriter
        # preloads its stored rewrites, so the first searches after the flip are local hits).
        self.before_switch: Callable[[str | None], Awaitable[Any]] | None = None
        # Called when a warm-up or refresh finishes (any process): new rewrites are stored.
        self.on_warmup_done: Callable[[], None] | None = None
        self._warmup_seen: tuple[str, float] | None = None
        self._loop = BackgroundLoop(
            "adapter watcher", self.sync_once, interval_s, on_error=self._failed
        )

    @contextlib.contextmanager
    def using(self, adapter: str | None):  # type: ignore[no-untyped-def]
        if adapter is None:
            yield
            return
        self.inflight[adapter] += 1
        try:
            yield
        finally:
            self.inflight[adapter] -= 1

    def _read(self) -> tuple[tuple[str, str] | None, str | None, list[tuple[str, float | None]]]:
        with session_scope(self.database_url) as s:
            act = active_adapter(s)
            prev = previous_adapter(s)
            rows = list_adapters(s)
            retired = [
                (a.name, a.retired_at.timestamp() if a.retired_at else None)
                for a in rows
                if a.status in (AdapterStatus.retired, AdapterStatus.rejected)
            ]
            warmups = [
                {"adapter": a.name, **a.metrics["warmup"]}
                for a in rows
                if isinstance((a.metrics or {}).get("warmup"), dict)
            ]
            self.warmup = max(warmups, key=lambda w: w.get("updated_at", 0), default=None)
            return ((act.name, act.path) if act else None), (prev.name if prev else None), retired

    async def sync_once(self) -> None:
        active, previous, retired = await to_thread.run_sync(self._read)
        if self.warmup is not None:
            for state in ("total", "done"):
                REWRITE_WARMUP.labels(self.warmup["adapter"], state).set(self.warmup.get(state, 0))
            finished = self.warmup.get("finished_at")
            if finished is not None:
                seen = (self.warmup["adapter"], float(finished))
                if seen != self._warmup_seen and self.on_warmup_done is not None:
                    self.on_warmup_done()
                self._warmup_seen = seen
        try:
            # After a policy-server restart nothing is loaded: put the active adapter back.
            loaded = (
                await ensure_loaded(self.policy, *active)
                if active is not None
                else set(await self.policy.list_models())
            )
        except PolicyError as e:
            self.last_error = f"policy server: {e}"
            log.warning(self.last_error)
            if active is not None:
                return  # keep serving the adapter we had; try again next poll
            loaded = set()
        new = active[0] if active else None
        if new != self.current and self.before_switch is not None:
            try:
                await self.before_switch(new)
            except Exception as e:  # noqa: BLE001 - switch anyway; misses fill the store
                log.warning("preparing the switch to %s failed: %s", new, e)
        self.current = new
        self.last_error = None
        await self._unload_stale(previous, retired, loaded)

    async def _unload_stale(
        self, previous: str | None, retired: list[tuple[str, float | None]], loaded: set[str]
    ) -> None:
        now = time.time()
        for name, retired_at in retired:
            if name in loaded and name not in (self.current, previous) and not self.inflight[name]:
                if retired_at is not None and now - retired_at < self.unload_grace_s:
                    continue
                with contextlib.suppress(PolicyError):
                    await self.policy.unload_adapter(name)
                    log.info("unloaded stale adapter %s", name)

    def _failed(self, error: Exception) -> None:
        self.last_error = f"{type(error).__name__}: {error}"

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
