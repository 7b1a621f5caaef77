"""Locust shoppers for `bench/reliability.py`: each search is followed by an event batch.

A shopper searches a query drawn from the pool, then reports impressions of the top results and
a click on one of them (unique event ids, so every acknowledged event must be stored once).
Everything the check needs is counted here, per second, and written to `OSPO_LOAD_REPORT` when
locust quits: statuses per endpoint, latencies, events acknowledged (a 200 answer's `stored`,
and the ids its per-item results say were stored), refused and naming an unknown search, and
the search ids answered. Settings come from the environment (see `bench/reliability.py`).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path

from locust import FastHttpUser, constant_throughput, events, task

QUERIES: list[str] = json.loads(Path(os.environ["OSPO_LOAD_QUERIES"]).read_text())
TASKS_PER_USER_S = float(os.environ.get("OSPO_LOAD_TASKS_PER_USER_S", "2.5"))
STARTED = time.monotonic()
seconds: dict[int, dict[str, list[float] | int]] = defaultdict(
    lambda: {"search_ms": [], "events_ms": [], "ok": 0, "5xx": 0, "503": 0, "429": 0, "other": 0}
)
totals = {"events_sent": 0, "events_acknowledged": 0, "searches_answered": 0,
          "events_refused": 0, "events_unknown_search": 0}  # fmt: skip
# What was promised, by id: every answered search must be logged, every acknowledged event stored.
answered_ids: list[str] = []
acknowledged_ids: list[str] = []
statuses: dict[str, dict[int, int]] = {"search": defaultdict(int), "events": defaultdict(int)}


def _count(name: str, status: int, ms: float) -> None:
    bucket = seconds[int(time.monotonic() - STARTED)]
    bucket[f"{name}_ms"].append(ms)  # type: ignore[union-attr]
    statuses[name][status] += 1
    kind = (
        "ok" if status == 200 else "503" if status == 503 else "5xx" if status >= 500
        else "429" if status == 429 else "other"
    )  # fmt: skip
    bucket[kind] += 1  # type: ignore[operator]


class Shopper(FastHttpUser):
    wait_time = constant_throughput(TASKS_PER_USER_S)

    @task
    def shop(self) -> None:
        query = random.choice(QUERIES)
        started = time.perf_counter()
        with self.client.post(
            "/v1/search", json={"query": query, "k": 10}, name="search", catch_response=True
        ) as r:
            _count("search", r.status_code, (time.perf_counter() - started) * 1000)
            r.success()  # judged by bench/reliability.py from the counts, not by locust
            if r.status_code != 200:
                return
            body = r.json()
        totals["searches_answered"] += 1
        answered_ids.append(body["search_id"])
        shown = [hit["product_id"] for hit in body["results"][:3]]
        batch = [
            {"event_id": uuid.uuid4().hex, "search_id": body["search_id"], "product_id": pid,
             "type": "impression"} for pid in shown
        ]  # fmt: skip
        if shown:
            batch.append({**batch[0], "event_id": uuid.uuid4().hex, "type": "click"})
        if not batch:
            return
        started = time.perf_counter()
        totals["events_sent"] += len(batch)
        with self.client.post("/v1/events", json=batch, name="events", catch_response=True) as e:
            _count("events", e.status_code, (time.perf_counter() - started) * 1000)
            e.success()
            if e.status_code == 200:
                answer = e.json()
                totals["events_acknowledged"] += answer["stored"]
                totals["events_refused"] += answer.get("refused", 0)
                totals["events_unknown_search"] += answer.get("unknown_search", 0)
                acknowledged_ids.extend(
                    r["event_id"] for r in answer.get("results", []) if r["status"] == "stored"
                )


@events.quitting.add_listener
def _write_report(environment, **_: object) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("OSPO_LOAD_REPORT")
    if not path:
        return
    Path(path).write_text(
        json.dumps(
            {
                "totals": totals,
                "answered_ids": answered_ids,
                "acknowledged_ids": acknowledged_ids,
                "statuses": {k: dict(v) for k, v in statuses.items()},
                "seconds": {str(s): b for s, b in sorted(seconds.items())},
            }
        )  # fmt: skip
    )
