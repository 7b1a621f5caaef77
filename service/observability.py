"""Prometheus metrics of the API process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SEARCHES = Counter("ospo_searches_total", "Searches served", ["rewrite_source"])
SEARCH_LATENCY = Histogram(
    "ospo_search_latency_seconds",
    "End-to-end search latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
STAGE_LATENCY = Histogram(
    "ospo_search_stage_seconds",
    "Latency of one search stage",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
EVENTS = Counter("ospo_events_total", "Events received", ["outcome"])
INDEX_SIZE = Gauge("ospo_index_products", "Products in the serving index")
POLICY_UP = Gauge("ospo_policy_up", "1 when the policy server answers its health check")
REWRITE_LOOKUPS = Counter(
    "ospo_rewrite_lookups_total",
    "Rewrite store lookups by the tier that answered (miss: none did; known_miss: a miss "
    "remembered since the last warm-up)",
    ["tier"],
)
REWRITE_HIT_RATIO = Gauge(
    "ospo_rewrite_hit_ratio",
    "Share of policy-served searches of this process answered from the rewrite store",
)
REWRITE_BACKGROUND = Counter(
    "ospo_rewrite_background_total",
    "Misses sent to the policy in the background (queued) or not, the backlog being full "
    "(dropped: the next search of the query asks again)",
    ["outcome"],
)
REWRITE_WARMUP = Gauge(
    "ospo_rewrite_warmup_queries",
    "The latest warm-up's head queries: total, and done (stored before or generated)",
    ["adapter", "state"],
)
SEARCH_LOG_BUFFER = Gauge(
    "ospo_search_log_buffered", "Searches answered and waiting in this process's log buffer"
)
RATE_LIMITED = Counter(
    "ospo_rate_limited_total", "Requests refused with 429 by the per-client limit", ["endpoint"]
)
SEARCH_LOG_DROPPED = Counter(
    "ospo_search_log_dropped_total",
    "Searches the database refused for their content (never for an outage), dropped",
)
SEARCH_LOG_RECOVERED = Counter(
    "ospo_search_log_recovered_total",
    "Searches replayed from the journal a dead API process left (already stored ones skipped)",
)
