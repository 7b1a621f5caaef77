"""Batch log replay: historical searches with their events, ingested idempotently.

Log JSONL, one search per line (fields in brackets are optional):

    {"search_id": str, "query": str, ["ts": ISO-8601], ["user_id": str], ["session_id": str],
     ["results": [product_id, ...]], ["rewrite": str], ["adapter": str],
     "events": [{["event_id": str], "product_id": str,
                 "type": "impression"|"click"|"add_to_cart"|"purchase", ["ts": ISO-8601]}]}

Event ids default to `<search_id>:<index>`, so replaying a file twice stores nothing twice.
Dataset judgments can be replayed as logs too (`--format chorus|esci|wands`): each query
becomes one synthetic search, and each judged product an event whose strength follows its gain
(≥ 1.0 purchase, ≥ 0.5 add-to-cart, > 0 click, 0 impression), with ids derived from the data.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.catalog.formats import FormatError, jsonl_objects, parse_labels
from service.db.engine import session_scope
from service.db.models import Search
from service.domain import EventType
from service.normalize import normalize_query
from service.repositories.searches import insert_events
from service.repositories.upsert import upsert

REPLAY_NS = uuid.UUID("6f1c8a52-4f0e-4d0a-9a38-0d5b1f4e2c11")


@dataclass
class LoggedSearch:
    search_id: str
    query: str
    ts: datetime
    results: list[str]
    events: list[dict[str, Any]]
    rewrite: str | None = None
    adapter: str | None = None
    user_id: str | None = None
    session_id: str | None = None


@dataclass
class ReplaySummary:
    searches_read: int = 0
    searches_new: int = 0
    events_read: int = 0
    events_new: int = 0
    queries: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {
            "searches_read": self.searches_read,
            "searches_new": self.searches_new,
            "events_read": self.events_read,
            "events_new": self.events_new,
            "distinct_queries": len(self.queries),
        }


def _ts(value: Any, where: str) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as e:
        raise FormatError(f"{where}: bad timestamp {value!r}") from e
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def read_log(path: Path) -> Iterator[LoggedSearch]:
    for where, obj in jsonl_objects(path):
        if not isinstance(obj, dict) or not obj.get("search_id") or not obj.get("query"):
            raise FormatError(f"{where}: each line needs `search_id` and `query`")
        sid = str(obj["search_id"])
        if len(sid) > 36:
            raise FormatError(f"{where}: search_id longer than 36 characters")
        events = []
        for i, ev in enumerate(obj.get("events") or []):
            if ev.get("type") not in set(EventType) or not ev.get("product_id"):
                raise FormatError(
                    f"{where}: event {i} needs product_id and a type in {', '.join(EventType)}"
                )
            events.append({
                "event_id": str(ev.get("event_id") or f"{sid}:{i}"),
                "search_id": sid,
                "product_id": str(ev["product_id"]),
                "type": ev["type"],
                "ts": _ts(ev.get("ts") or obj.get("ts"), where),
            })  # fmt: skip
        yield LoggedSearch(
            search_id=sid,
            query=str(obj["query"]),
            ts=_ts(obj.get("ts"), where),
            results=[str(p) for p in obj.get("results") or []],
            events=events,
            rewrite=obj.get("rewrite"),
            adapter=obj.get("adapter"),
            user_id=obj.get("user_id"),
            session_id=obj.get("session_id"),
        )


def _event_type(gain: float) -> EventType:
    if gain >= 1.0:
        return EventType.purchase
    if gain >= 0.5:
        return EventType.add_to_cart
    return EventType.click if gain > 0 else EventType.impression


def labels_as_log(fmt: str, path: Path) -> Iterator[LoggedSearch]:
    """A judgment file presented as one logged search per query."""
    by_query: dict[str, list[tuple[str, float]]] = defaultdict(list)
    text: dict[str, str] = {}
    for lab in parse_labels(fmt, path):  # type: ignore[arg-type]
        key = normalize_query(lab.query)
        text.setdefault(key, lab.query)
        by_query[key].append((lab.product_id, lab.gain))
    for key, judged in by_query.items():
        sid = str(uuid.uuid5(REPLAY_NS, f"{fmt}:{key}"))
        ts = datetime.now(UTC)
        yield LoggedSearch(
            search_id=sid,
            query=text[key],
            ts=ts,
            results=[pid for pid, _ in judged],
            events=[
                {
                    "event_id": f"{sid}:{pid}",
                    "search_id": sid,
                    "product_id": pid,
                    "type": _event_type(gain),
                    "ts": ts,
                }
                for pid, gain in judged
            ],  # fmt: skip
        )


def replay(
    database_url: str, searches: Iterator[LoggedSearch], batch: int = 500, progress: bool = True
) -> ReplaySummary:
    summary = ReplaySummary()
    pending: list[LoggedSearch] = []

    def flush() -> None:
        if not pending:
            return
        rows = [
            {
                "id": s.search_id, "query": s.query, "normalized_query": normalize_query(s.query),
                "rewrite": s.rewrite or s.query, "rewrite_source": "replay",
                "adapter": s.adapter, "prompt_version": None, "k": max(len(s.results), 1),
                "product_ids": s.results, "scores": [], "index_version": None,
                "latency_ms": 0.0, "user_id": s.user_id, "session_id": s.session_id,
                "created_at": s.ts,
            }
            for s in pending
        ]  # fmt: skip
        events = [e for s in pending for e in s.events]
        with session_scope(database_url) as session:
            summary.searches_new += upsert(session, Search.__table__, rows, ["id"], None)
            for start in range(0, len(events), 1000):
                summary.events_new += insert_events(session, events[start : start + 1000])
        pending.clear()

    for s in tqdm(searches, desc="replay", unit=" searches", disable=not progress):
        summary.searches_read += 1
        summary.events_read += len(s.events)
        summary.queries.add(normalize_query(s.query))
        pending.append(s)
        if len(pending) >= batch:
            flush()
    flush()
    return summary
