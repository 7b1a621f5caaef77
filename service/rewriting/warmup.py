"""Warm-up: rewrite the head queries with an adapter before it serves them.

Production query rewriters serve stored rewrites for the head of the query distribution and
never make a shopper wait for generation. Before a promotion flips the active pointer, at
start-up, and as the periodic refresh of the active adapter, this module:
1. picks the head queries: the `queries` most searched normalised queries of the search log,
   plus every labelled (training) query, plus (a refresh) the queries served without a
   rewrite since the previous warm-up — the misses, most frequent first;
2. skips those whose rewrite by this adapter and prompt version is already stored;
3. asks the policy for the rest, `concurrency` requests at a time; a policy that rewrites
   many queries per request (`BatchPolicy`: vLLM's batch chat endpoint) gets `batch_size`
   queries per request, so the engine schedules concurrency × batch_size sequences at once
   instead of paying a round trip and a scheduling slot per query (bench/step_speed.py measures
   both); each answer goes to the database tier of the rewrite store, where every API process
   finds it;
4. stops at `time_limit_s`: the flip then goes ahead with what is stored, and misses are
   rewritten in the background as searches ask for them.
Progress is written to the adapter's row (`metrics.warmup`) about once a second, so `/admin`
and every API process's `/metrics` show it while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from anyio import to_thread

from service.db.engine import session_scope
from service.domain import RewriteOrigin
from service.policy.protocol import BatchPolicy, Policy, PolicyError, RewriteResult
from service.policy.retry import until_reachable
from service.repositories.adapters import set_warmup
from service.repositories.labels import labelled_queries
from service.repositories.rewrites import put_rewrites, stored_queries
from service.repositories.searches import missed_queries, top_queries
from service.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
MAX_MISSES = 10_000  # per refresh; the time limit usually ends one before this matters


class WarmupStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    timed_out = "timed_out"  # the time limit passed; the flip went ahead with what was stored
    failed = "failed"


@dataclass(frozen=True)
class WarmupConfig:
    queries: int = 500  # head queries of the search log (training queries come on top)
    time_limit_s: float = 300.0
    concurrency: int = 8
    batch_size: int = 16  # queries per request to a `BatchPolicy` (others: 1)

    @classmethod
    def from_settings(cls, settings: Settings) -> WarmupConfig:
        return cls(
            queries=settings.warmup_queries,
            time_limit_s=settings.warmup_time_limit_s,
            concurrency=settings.warmup_concurrency,
            batch_size=settings.warmup_batch_size,
        )


def head_queries(
    database_url: str, n: int, missed_since: datetime | None = None
) -> list[tuple[str, str]]:
    """(normalised query, a spelling) of the `n` most searched queries, then the labelled
    queries, then the queries missed since `missed_since` (most frequent first), each once."""
    with session_scope(database_url) as s:
        head = top_queries(s, n) if n > 0 else []
        labelled = labelled_queries(s)
        missed = missed_queries(s, missed_since, MAX_MISSES) if missed_since else []
    chosen = dict(head)
    for nq, q in [*labelled, *missed]:
        chosen.setdefault(nq, q)
    return list(chosen.items())


async def warm(
    policy: Policy,
    database_url: str,
    adapter: str,
    prompt_version: str,
    config: WarmupConfig,
    missed_since: datetime | None = None,
    reload: Callable[[], Awaitable[Any]] | None = None,
) -> dict[str, Any]:
    """Store the adapter's rewrites of the head queries (and of the queries missed since
    `missed_since`); returns the final progress record. A policy server that goes away
    meanwhile (restarting) is waited for, within the time limit, and `reload` (loading the
    adapter again: a restarted server has none) is awaited before asking it again."""
    started = time.time()
    queries = await to_thread.run_sync(head_queries, database_url, config.queries, missed_since)

    def missing() -> list[tuple[str, str]]:
        with session_scope(database_url) as s:
            have = stored_queries(s, adapter, prompt_version, [nq for nq, _ in queries])
        return [(nq, q) for nq, q in queries if nq not in have]

    todo = await to_thread.run_sync(missing)
    progress: dict[str, Any] = {
        "status": WarmupStatus.running,
        "prompt_version": prompt_version,
        "total": len(queries),
        "done": len(queries) - len(todo),
        "generated": 0,
        "failed": 0,
        "started_at": started,
        "updated_at": started,
    }
    buffer: list[dict[str, Any]] = []

    def flush(final: bool = False) -> None:
        rows, buffer[:] = list(buffer), []
        progress["updated_at"] = time.time()
        if final:
            progress["finished_at"] = progress["updated_at"]
            progress["seconds"] = round(progress["finished_at"] - started, 2)
        with session_scope(database_url) as s:
            put_rewrites(s, rows)
            set_warmup(s, adapter, dict(progress))

    await to_thread.run_sync(flush)
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    reloading = asyncio.Lock()

    batched = isinstance(policy, BatchPolicy)
    per_request = max(1, config.batch_size) if batched else 1

    async def ask(spellings: list[str]) -> list[RewriteResult]:
        if batched:
            return await policy.rewrite_many(spellings, adapter=adapter)  # type: ignore[attr-defined]
        return [await policy.rewrite(spellings[0], adapter=adapter)]

    async def rewrite_waiting(spellings: list[str]) -> list[RewriteResult]:
        # The time limit below bounds the wait: it cancels whatever is still retrying.
        async for attempt in until_reachable(config.time_limit_s):
            with attempt:
                if attempt.retry_state.attempt_number > 1 and reload is not None:
                    async with reloading:  # one load; the other workers then find it listed
                        await reload()
                return await ask(spellings)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def worker() -> None:
        while True:
            chunk: list[tuple[str, str]] = []
            while len(chunk) < per_request and not queue.empty():
                chunk.append(queue.get_nowait())
            if not chunk:
                return
            try:
                results = await rewrite_waiting([spelling for _, spelling in chunk])
            except PolicyError as e:
                progress["failed"] += len(chunk)
                log.warning("warm-up of %d queries with %s failed: %s", len(chunk), adapter, e)
                continue
            for (nq, _), result in zip(chunk, results, strict=True):
                buffer.append(
                    {
                        "adapter": adapter,
                        "prompt_version": prompt_version,
                        "normalized_query": nq,
                        "answer": result.answer if result.ok else None,
                        "raw_completion": result.raw_completion,
                        "origin": RewriteOrigin.warmup,
                    }
                )
            progress["done"] += len(chunk)
            progress["generated"] += len(chunk)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            await to_thread.run_sync(flush)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, config.concurrency))]
    report = asyncio.create_task(reporter())
    try:
        async with asyncio.timeout(config.time_limit_s):
            await asyncio.gather(*workers)
        progress["status"] = WarmupStatus.done
    except TimeoutError:
        progress["status"] = WarmupStatus.timed_out
    except BaseException:
        progress["status"] = WarmupStatus.failed
        raise
    finally:
        for task in (*workers, report):
            task.cancel()
        for task in (*workers, report):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await to_thread.run_sync(flush, True)
    log.info(
        "warm-up of %s: %s, %d/%d stored (%d generated) in %.1f s",
        adapter, progress["status"], progress["done"], progress["total"],
        progress["generated"], progress["seconds"],
    )  # fmt: skip
    return progress
