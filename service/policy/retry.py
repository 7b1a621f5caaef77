"""Waiting for a policy server that is starting or restarting, instead of failing on it.

Promotion, warm-up and the refresh talk to vLLM from a worker; on `make up` the API and the
workers are ready well before vLLM (~40 s on CPU), and a restarted vLLM is gone for as long.
What cannot reach the server (`PolicyUnreachable`: connection refused or reset, a proxy's
502/503) is retried with exponential backoff (0.5 s doubling to 10 s) until `limit_s`; a
refusal from a server that answers (an adapter it cannot load, a bad completion) fails at once.
"""

from __future__ import annotations

import logging

from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from service.policy.protocol import PolicyUnreachable

log = logging.getLogger(__name__)

FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0


def until_reachable(limit_s: float) -> AsyncRetrying:
    """`async for attempt in until_reachable(s): with attempt: ...` — retried while the policy
    server is unreachable, for up to `limit_s` seconds; then the last error is raised."""
    return AsyncRetrying(
        retry=retry_if_exception_type(PolicyUnreachable),
        wait=wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S),
        stop=stop_after_delay(limit_s),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
