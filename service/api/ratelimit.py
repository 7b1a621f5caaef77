"""Per-client rate limits of the public endpoints (the `limits` library, sliding window).

A client is the request's peer address (behind a proxy, run uvicorn with --forwarded-allow-ips
so that it is the X-Forwarded-For address). Counters live in Redis when `OSPO_REDIS_URL` is set,
so every API process shares them, else in this process. If the counter store fails, requests
pass: a rate limiter must never be what takes search down.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated

from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from service.errors import RateLimited
from service.observability import RATE_LIMITED
from service.settings import Settings

log = logging.getLogger(__name__)

# OpenAPI: the header a 429 carries.
RETRY_AFTER = {"Retry-After": {"description": "Seconds until the client may retry.",
                               "schema": {"type": "integer"}}}  # fmt: skip


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        storage: Storage = (
            RedisStorage(
                settings.redis_url.replace("redis://", "async+redis://", 1),
                implementation="redispy",
                key_prefix="ospo-rate",
                socket_timeout=0.2,
                socket_connect_timeout=0.2,
            )
            if settings.redis_url
            else MemoryStorage()
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self.rules: dict[str, RateLimitItem] = {
            name: parse(value)
            for name, value in (
                ("search", settings.rate_limit_search),
                ("events", settings.rate_limit_events),
            )
            if value
        }

    async def check(self, name: str, client: str) -> None:
        rule = self.rules.get(name)
        if rule is None:
            return
        try:
            allowed = await self._limiter.hit(rule, name, client)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(rule, name, client)
        except Exception as e:  # noqa: BLE001 - fail open (module docstring)
            log.warning("rate-limit store unavailable, not limiting: %s", e)
            return
        RATE_LIMITED.labels(name).inc()
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"more than {rule} from {client} on {name}; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def _limit(name: str):  # type: ignore[no-untyped-def]
    async def check(request: Request) -> None:
        client = request.client.host if request.client else "unknown"
        await request.app.state.rate_limits.check(name, client)

    return Depends(check)


SearchRateLimit = Annotated[None, _limit("search")]
EventsRateLimit = Annotated[None, _limit("events")]
