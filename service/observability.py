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
