"""The search-analytics use case: resolve the window, run the three aggregate statements of
service/repositories/analytics.py, roll their additive counts up into figures.

Figures of a group g of searches (notation of the repository module):

    click_through_rate   Σ clicked / |g|          no_result_rate   Σ empty / |g|
    add_to_cart_rate     Σ carted / |g|           purchase_rate    Σ bought / |g|
    mean_click_position  Σ pos_sum / Σ pos_n      (over click events that have a position)

A rate of an empty group is None (undefined), never 0.

Documented decisions
--------------------
* The window is half-open, [since, until), in UTC; a naive datetime is read as UTC. Without
  `until` it ends at the start of tomorrow (UTC), so the default window is the last `days` whole
  UTC days, today included. Without `since` it starts `days` (default 30) before `until`.
  With `since`, `days` counts forward from it (and cuts a given `until` short). Every request
  the published schema allows is served (the schema cannot state rules between parameters,
  so none is refused for them): since >= until is an empty window, a window longer than 366
  days is cut to its last 366 (the per-day series is bounded), dates beyond the years 1 to
  9999 stop there. The answer's `window` says what was counted.
* Adapter filter: an adapter name, or `-` for the searches served with no adapter (adapter
  names start with a letter or digit, so `-` names none of them).
* The three statements run in one transaction (`begin`: on PostgreSQL one REPEATABLE READ
  snapshot, so the totals and the top lists agree while searches are being logged).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from service.db.engine import session_scope
from service.repositories.analytics import (
    GroupCounts,
    QueryCount,
    Window,
    begin,
    group_counts,
    top_queries,
)
from service.schemas.analytics import (
    AdapterFigures,
    AnalyticsOut,
    AnalyticsWindow,
    DayFigures,
    Figures,
    QueryFigures,
)

DEFAULT_DAYS = 30
MAX_DAYS = 366
NO_ADAPTER = "-"  # the adapter filter value that selects searches served with no adapter

_COUNTS = ("searches", "no_result", "clicked", "carted", "bought", "pos_sum", "pos_n")


def resolve_window(
    now: datetime,
    *,
    days: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    adapter: str | None = None,
) -> Window:
    """The window the parameters name (module docstring). Every combination the published
    schema allows names one, so none is refused here."""
    length = timedelta(days=days or DEFAULT_DAYS)
    if since is not None:
        since = _utc(since)
        end = _utc(until) if until is not None else None
        if days is not None:  # `days` counted forward from `since`
            end = min(end, _shift(since, length)) if end is not None else _shift(since, length)
        until = end if end is not None else _tomorrow(now)
    else:
        until = _utc(until) if until is not None else _tomorrow(now)
        since = _shift(until, -length)
    # At most MAX_DAYS, the most recent ones; `since` after `until` is an empty window.
    since = min(max(since, _shift(until, -timedelta(days=MAX_DAYS))), until)
    if adapter is None:
        return Window(since, until)
    return Window(
        since, until, only_adapter=True, adapter=None if adapter == NO_ADAPTER else adapter
    )


FIRST = datetime.min.replace(tzinfo=UTC)
LAST = datetime.max.replace(tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:30+01:00 is in year 0 in UTC
        return FIRST if value.year == 1 else LAST


def _shift(value: datetime, delta: timedelta) -> datetime:
    """`value + delta`, held within the years 1 to 9999 that Python can count days in."""
    try:
        return value + delta
    except OverflowError:
        return FIRST if delta < timedelta(0) else LAST


def _tomorrow(now: datetime) -> datetime:
    return _shift(_utc(now).replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1))


def window_days(w: Window) -> list[date]:
    """Every UTC day the window touches, oldest first (none when it is empty)."""
    if w.since >= w.until:
        return []
    first, last = w.since.date(), (w.until - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def figures(counts: dict[str, int]) -> dict[str, int | float | None]:
    """The figures of a group from its summed counts (module docstring)."""
    n = counts["searches"]
    return {
        "searches": n,
        "clicked_searches": counts["clicked"],
        "no_result_searches": counts["no_result"],
        "add_to_cart_searches": counts["carted"],
        "purchase_searches": counts["bought"],
        "positioned_clicks": counts["pos_n"],
        "click_through_rate": _ratio(counts["clicked"], n),
        "no_result_rate": _ratio(counts["no_result"], n),
        "mean_click_position": _ratio(counts["pos_sum"], counts["pos_n"]),
        "add_to_cart_rate": _ratio(counts["carted"], n),
        "purchase_rate": _ratio(counts["bought"], n),
    }


def _sum(groups: Iterable[GroupCounts]) -> dict[str, int]:
    total = dict.fromkeys(_COUNTS, 0)
    for g in groups:
        for name in _COUNTS:
            total[name] += getattr(g, name)
    return total


def roll_up(
    groups: list[GroupCounts], days: list[date]
) -> tuple[Figures, list[DayFigures], list[AdapterFigures]]:
    """Totals, per-day (every day of `days`) and per-adapter figures of the (day, adapter)
    groups: sums of additive counts, so exact."""
    by_day: dict[date, list[GroupCounts]] = defaultdict(list)
    by_adapter: dict[str | None, list[GroupCounts]] = defaultdict(list)
    for g in groups:
        by_day[g.day].append(g)
        by_adapter[g.adapter].append(g)
    totals = Figures(**figures(_sum(groups)))
    per_day = [DayFigures(day=d, **figures(_sum(by_day.get(d, [])))) for d in days]
    per_adapter = sorted(
        (AdapterFigures(adapter=a, **figures(_sum(gs))) for a, gs in by_adapter.items()),
        key=lambda f: (-f.searches, f.adapter or ""),
    )
    return totals, per_day, per_adapter


def _query_figures(rows: list[QueryCount]) -> list[QueryFigures]:
    return [
        QueryFigures(
            query=r.query,
            normalized_query=r.normalized_query,
            searches=r.searches,
        )
        for r in rows
    ]


def search_analytics(
    database_url: str,
    *,
    days: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = 10,
    adapter: str | None = None,
    now: datetime | None = None,
) -> AnalyticsOut:
    w = resolve_window(
        now or datetime.now(UTC), days=days, since=since, until=until, adapter=adapter
    )
    started = time.perf_counter()
    with session_scope(database_url) as session:
        begin(session)
        groups = group_counts(session, w)
        top_all = top_queries(session, w, top, no_result_only=False)
        top_empty = top_queries(session, w, top, no_result_only=True)
    query_ms = (time.perf_counter() - started) * 1000
    days_list = window_days(w)
    totals, per_day, per_adapter = roll_up(groups, days_list)
    return AnalyticsOut(
        window=AnalyticsWindow(since=w.since, until=w.until, days=len(days_list), adapter=adapter),
        totals=totals,
        per_day=per_day,
        per_adapter=per_adapter,
        top_queries=_query_figures(top_all),
        top_no_result_queries=_query_figures(top_empty),
        query_ms=round(query_ms, 3),
    )
