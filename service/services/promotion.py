"""Promotion: warm the rewrite store, then flip the active pointer; and rollback.

Two sides:
- `promote` runs on a worker of the serving queue (task `ospo.promote_adapter`), in the online
  update and in `ospo adapters activate`. With vLLM the adapter is loaded, canaried and warmed
  (`service.rewriting.warmup`) before the flip; an in-process policy lives in the API process,
  so it is only verified and flipped (each API process's watcher loads it).
- `ServingAdapters` is what an API process does for `/admin/adapters/*`: queue a warm
  promotion for that worker (202), or load, canary and flip here (`warm=false`, rollback) and
  switch this process at once instead of at its watcher's next poll.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread

from service.adapters.registry import verify_files
from service.adapters.swap import activate, ensure_loaded, rollback
from service.db.engine import session_scope
from service.domain import AdapterStatus
from service.errors import Conflict, NotFound, Unavailable
from service.policy.factory import make_policy
from service.policy.protocol import PolicyUnreachable
from service.policy.retry import until_reachable
from service.queue import PROMOTE_TASK, celery_client
from service.repositories.adapters import active_adapter, get_adapter, set_active, set_warmup
from service.repositories.rewrites import count_rewrites
from service.rewriting.grounding import serving_prompt
from service.rewriting.rewriter import PolicyRewriter
from service.rewriting.warmup import WarmupConfig, WarmupStatus, warm
from service.schemas.admin import PromotionOut, RewriteStoreOut
from service.services.search_log import ORPHAN_SCAN_S
from service.settings import Settings

# A search reaches the log after its answer: a millisecond normally, up to an orphan scan
# when its process died and another replays its journal (with the search's own time). The
# refresh looks back that far before the previous warm-up so no such miss is skipped for
# good; a miss already rewritten is found in the store and costs nothing.
MISS_LOOKBACK_S = 2 * ORPHAN_SCAN_S


def check_promotable(settings: Settings, name: str) -> None:
    """404 for an unknown adapter, 409 for a rejected one, before anything is queued."""
    with session_scope(settings.resolved_database_url) as s:
        row = get_adapter(s, name)
        if row is None:
            raise NotFound(f"no adapter named {name!r}")
        if row.status == AdapterStatus.rejected:
            raise Conflict(f"adapter {name!r} was rejected by the gate; promote refused")


def mark_queued(settings: Settings, name: str) -> None:
    with session_scope(settings.resolved_database_url) as s:
        set_warmup(s, name, {"status": WarmupStatus.queued, "updated_at": time.time()})


def enqueue_promotion(settings: Settings, name: str) -> None:
    """Queue a promotion with warm-up for a worker of the serving queue (404/409 first)."""
    check_promotable(settings, name)
    mark_queued(settings, name)
    try:
        celery_client(settings).send_task(PROMOTE_TASK, args=[name])
    except Exception as e:  # noqa: BLE001 - any broker failure
        raise Unavailable(f"the task broker is unavailable: {e}") from e


@dataclass
class ServingAdapters:
    """Adapter promotion, rollback and the rewrite store, seen from one API process."""

    settings: Settings
    rewriter: PolicyRewriter | None  # None: no policy backend configured

    def _policy_rewriter(self) -> PolicyRewriter:
        if self.rewriter is None:
            raise Conflict("no policy backend is configured (OSPO_POLICY_BACKEND=none)")
        return self.rewriter

    async def promote(self, name: str, warm: bool) -> PromotionOut:
        rewriter = self._policy_rewriter()
        if warm and self.settings.policy_backend == "vllm":
            await to_thread.run_sync(enqueue_promotion, self.settings, name)
            return PromotionOut(status="warming")
        result = await activate(rewriter.policy, self.settings.resolved_database_url, name)
        await rewriter.watcher.sync_once()
        return PromotionOut(status="active", **asdict(result))

    async def rollback(self) -> PromotionOut:
        rewriter = self._policy_rewriter()
        result = await rollback(rewriter.policy, self.settings.resolved_database_url)
        await rewriter.watcher.sync_once()
        return PromotionOut(status="active", **asdict(result))

    async def rewrite_store(self) -> RewriteStoreOut:
        status = self._policy_rewriter().store_status()
        stored = await to_thread.run_sync(
            self._count_stored, status["active_adapter"], status["prompt_version"]
        )
        return RewriteStoreOut(stored=stored, **status)

    def _count_stored(self, adapter: str | None, prompt_version: str) -> int:
        with session_scope(self.settings.resolved_database_url) as s:
            return count_rewrites(s, adapter, prompt_version)


def promote(settings: Settings, name: str, warm_first: bool = True) -> dict[str, Any]:
    url = settings.resolved_database_url
    if settings.policy_backend != "vllm":
        with session_scope(url) as s:
            row = get_adapter(s, name)
            if row is None:
                raise NotFound(f"no adapter named {name!r}")
            verify_files(row)
            previous = set_active(s, name)
        return {"active": name, "previous": previous}

    async def go() -> dict[str, Any]:
        prompt = serving_prompt(settings)
        policy = make_policy(settings, prompt)
        try:
            # Asked for while the policy server is still starting (`make up`: the API is up
            # ~40 s before vLLM) or restarting: wait for it within the warm-up time limit.
            result = await activate(
                policy,
                url,
                name,
                WarmupConfig.from_settings(settings) if warm_first else None,
                prompt.version,
                wait_s=settings.warmup_time_limit_s,
            )
            return asdict(result)
        finally:
            await policy.aclose()

    try:
        return asyncio.run(go())
    except Exception as e:
        with session_scope(url) as s:
            set_warmup(
                s, name,
                {"status": WarmupStatus.failed, "error": str(e)[:500], "updated_at": time.time()},
            )  # fmt: skip
        raise


def prepare_candidate(settings: Settings, name: str) -> dict[str, Any]:
    """Load `name` into the policy server and store its head-query rewrites *without* making it
    active: what an interleaved comparison serves for the candidate's side."""
    if settings.policy_backend != "vllm":
        return {"skipped": f"policy backend {settings.policy_backend}: nothing to load"}
    url = settings.resolved_database_url
    with session_scope(url) as s:
        row = get_adapter(s, name)
        if row is None:
            raise NotFound(f"no adapter named {name!r}")
        path = row.path

    return _load_and_warm(settings, name, path, None, settings.warmup_time_limit_s)


def warm_active(settings: Settings, fresh_s: float = 30.0) -> dict[str, Any]:
    """Start-up warm-up and periodic refresh of the active adapter: store what is missing of
    its head-query rewrites and of the queries missed since its previous warm-up. Skipped when
    another warm-up of it reported progress within `fresh_s`."""
    if settings.policy_backend != "vllm":
        return {"skipped": f"policy backend {settings.policy_backend}: nothing to warm"}
    url = settings.resolved_database_url
    with session_scope(url) as s:
        row = active_adapter(s)
        if row is None:
            return {"skipped": "no active adapter"}
        name, path = row.name, row.path
        progress = (row.metrics or {}).get("warmup") or {}
    if (
        progress.get("status") == WarmupStatus.running
        and time.time() - float(progress.get("updated_at", 0)) < fresh_s
    ):
        return {"skipped": f"a warm-up of {name} is running"}
    # Started with the stack: the policy server may take its whole start-up time.
    since = missed_since(progress)
    return _load_and_warm(settings, name, path, since, settings.vllm_start_timeout_s)


def missed_since(progress: dict[str, Any]) -> datetime | None:
    """Where a refresh starts reading the search log, the queue of misses: `MISS_LOOKBACK_S`
    before the previous warm-up of the adapter started (None: it never warmed)."""
    last = progress.get("started_at")
    return datetime.fromtimestamp(float(last) - MISS_LOOKBACK_S, UTC) if last else None


def _load_and_warm(
    settings: Settings,
    name: str,
    path: str,
    missed_since: datetime | None,
    wait_s: float,
) -> dict[str, Any]:
    """Load `name` into the policy server (waiting up to `wait_s` for a server that is not
    reachable yet) and store its missing head-query rewrites (and those of the queries missed
    since `missed_since`)."""

    async def go() -> dict[str, Any]:
        prompt = serving_prompt(settings)
        policy = make_policy(settings, prompt)
        try:
            try:
                async for attempt in until_reachable(wait_s):
                    with attempt:  # a restarted server has no adapter: load it before asking
                        await ensure_loaded(policy, name, path)
            except PolicyUnreachable as e:
                raise Unavailable(f"the policy server did not come up; warm-up skipped: {e}") from e
            return await warm(
                policy,
                settings.resolved_database_url,
                name,
                prompt.version,
                WarmupConfig.from_settings(settings),
                missed_since,
                reload=lambda: ensure_loaded(policy, name, path),
            )
        finally:
            await policy.aclose()

    return asyncio.run(go())
