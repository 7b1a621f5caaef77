"""Search analytics in SQL: three aggregate statements, the same on PostgreSQL and SQLite.

Notation, for a window W = [since, until) and an optional adapter filter:

    S              the searches s with since <= s.created_at < until (and s.adapter = the filter)
    day(s)         the UTC calendar day of s.created_at
    empty(s)       1 when s showed no product (json_array_length(product_ids) = 0), else 0
    E(s)           the click, add_to_cart and purchase events of s (impressions play no part)
    clicked(s)     1 when E(s) holds a click, else 0; carted(s), bought(s) likewise for
                   add_to_cart and purchase
    pos_sum(s)     sum of the positions of the clicks in E(s) that have one; pos_n(s) their count

The summary statement returns rows (day, adapter, searches, no_result, clicked, carted, bought,
pos_sum, pos_n) of additive counts over groups of S with one (day, adapter); several rows may
name the same group and are summed by the caller (service/services/analytics.py), where every
reported figure is a ratio of such sums. Totals, per-day and per-adapter figures are all exact
roll-ups of this one result.

Documented decisions
--------------------
* Events belong to their search's day and window, whatever their own timestamp: a purchase the
  day after a search converts that search. The window selects searches; their events follow.
* One summary statement grouped by (day, adapter), not one per figure group: every figure is a
  ratio of additive counts, so rolling the few hundred (day, adapter) rows up in Python is
  exact, and the log is read once, not three times. (GROUPING SETS would roll up in SQL, but
  SQLite has none.)
* The summary is a UNION ALL of two aggregates over S: (a) searches left-joined to the
  per-search event summary, an aggregate of events grouped by search_id (hashed, one pass over
  the events); and (b) the no-result searches, counted from the partial index
  ix_searches_no_result alone (migration 0004). Counting them in (a) would parse the
  product_ids JSON of every search in the window: a third of the statement's time at a million
  searches (bench/results/analytics.json: 30 days, 4.3 s without 0004's indexes, 2.9 s with).
* Whether the event summary is restricted to S (a semi-join, `restrict_events`) is a choice of
  plan, not of result: both are exact. Restricted, a narrow window joins or probes only its
  own searches' events instead of aggregating every event in the log; unrestricted, a wide
  window avoids hashing every search id of S a second time. `group_counts` restricts when the
  window covers less than RESTRICT_BELOW of the log's time span (two index look-ups find the
  span); the bench times both choices for five windows, and the rule's pick is the faster (1.6
  to 38 times) or, at 40 % of the log, as fast.
* No analytics index on events: the bench measured events(search_id, type, position) and the
  planner uses it only for the last-hour window (index-only probes instead of the probes of
  ix_events_search_id, a few milliseconds), so it would mostly cost every event insert (68 MiB
  per million events). Likewise statistics on the day expression change no plan once work_mem
  is WORK_MEM (below).
* The UTC day is date_bin('1 day', created_at, 2000-01-01 UTC) on PostgreSQL: integer arithmetic
  on the timestamp, no time-zone conversion (cheaper than date(timezone('UTC', created_at)) over
  a million rows). SQLite stores naive UTC text, so date(created_at) is the day.
* "No result" is json_array_length(product_ids) = 0 with a literal 0, word for word the
  predicate of ix_searches_no_result, so PostgreSQL proves the partial index applies.
* Top queries are grouped by normalized_query; the spelling shown is min(query) (one that
  shoppers typed, deterministic). Ties are broken by normalized_query, ascending.
* On PostgreSQL the three statements run in one REPEATABLE READ transaction (one snapshot, so
  totals and top lists agree while searches are logged) with work_mem raised to WORK_MEM for
  it, so the per-search event summary of a million searches is hashed in memory, not in
  batches on disk, and without parallel workers: a parallel plan for the summary builds the
  per-search event summary once in *every* worker (it is the inner side of a non-parallel-aware
  hash join), tripling that work; in the bench ("parallel plans allowed") they gained nothing
  beyond noise from a day to 30 days and tripled the last hour (worker start-up), and an admin
  report should take one core of the database that serves searches, not three. Plans are
  always made for the actual window (plan_cache_mode = force_custom_plan): psycopg prepares a
  statement run five times on a connection, and PostgreSQL may then keep a generic plan that
  does not know whether the window holds a day or the whole log; planning takes milliseconds,
  the statements hundreds of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    case,
    func,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from service.db.models import Event, Search
from service.domain import EventType

RESTRICT_BELOW = 0.5  # share of the log's time span under which the event summary is restricted
WORK_MEM = "64MB"  # PostgreSQL work_mem of the analytics transaction (SET LOCAL)
# The UTC day on PostgreSQL, written out with constants (no bound parameters) so the
# candidate statistics measured by bench/analytics.py match it.
PG_DAY = "date_bin('1 day', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
NO_RESULT = "json_array_length(product_ids) = 0"  # the predicate of ix_searches_no_result


@dataclass(frozen=True)
class Window:
    """Searches with since <= created_at < until; `only_adapter`: of `adapter` alone (None: the
    searches served with no adapter)."""

    since: datetime
    until: datetime
    only_adapter: bool = False
    adapter: str | None = None


@dataclass(frozen=True)
class GroupCounts:
    """Additive counts of part of one (day, adapter) group of the window (notation above)."""

    day: date
    adapter: str | None
    searches: int
    no_result: int
    clicked: int
    carted: int
    bought: int
    pos_sum: int
    pos_n: int


@dataclass(frozen=True)
class QueryCount:
    normalized_query: str
    query: str  # one spelling: min(query)
    searches: int


def begin(session: Session) -> None:
    """Start the analytics transaction (PostgreSQL: one snapshot, more work_mem; decisions)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def utc_day(dialect: str) -> ColumnElement[object]:
    """The UTC day of searches.created_at: a timestamptz at UTC midnight on PostgreSQL, a
    'YYYY-MM-DD' string on SQLite (`as_date` reads both)."""
    if dialect == "postgresql":
        return literal_column(PG_DAY.replace("created_at", "searches.created_at"))
    return func.date(Search.created_at)


def as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


def no_result() -> ColumnElement[bool]:
    return literal_column(NO_RESULT.replace("product_ids", "searches.product_ids")).self_group()


def _in_window(w: Window) -> ColumnElement[bool]:
    cond = and_(Search.created_at >= w.since, Search.created_at < w.until)
    if w.only_adapter:
        by = Search.adapter.is_(None) if w.adapter is None else Search.adapter == w.adapter
        cond = and_(cond, by)
    return cond


def _flag(kind: EventType) -> ColumnElement[int]:
    return func.max(case((Event.type == kind.value, 1), else_=0))


def summary_statement(dialect: str, w: Window, *, restrict_events: bool) -> CompoundSelect:
    """Rows (day, adapter, searches, no_result, clicked, carted, bought, pos_sum, pos_n)."""
    is_click = Event.type == EventType.click.value
    per_search = (
        select(
            Event.search_id.label("search_id"),
            _flag(EventType.click).label("clicked"),
            _flag(EventType.add_to_cart).label("carted"),
            _flag(EventType.purchase).label("bought"),
            func.sum(case((is_click, Event.position))).label("pos_sum"),
            func.count(case((is_click, Event.position))).label("pos_n"),
        )
        .where(
            Event.type.in_(
                [EventType.click.value, EventType.add_to_cart.value, EventType.purchase.value]
            )
        )
        .group_by(Event.search_id)
    )
    if restrict_events:
        per_search = per_search.where(Event.search_id.in_(select(Search.id).where(_in_window(w))))
    e = per_search.subquery("per_search")
    zero = literal_column("0")
    day = utc_day(dialect)
    with_events = (
        select(
            day.label("day"),
            Search.adapter,
            func.count().label("searches"),
            zero.label("no_result"),
            func.coalesce(func.sum(e.c.clicked), 0).label("clicked"),
            func.coalesce(func.sum(e.c.carted), 0).label("carted"),
            func.coalesce(func.sum(e.c.bought), 0).label("bought"),
            func.coalesce(func.sum(e.c.pos_sum), 0).label("pos_sum"),
            func.coalesce(func.sum(e.c.pos_n), 0).label("pos_n"),
        )
        .select_from(Search)
        .outerjoin(e, e.c.search_id == Search.id)
        .where(_in_window(w))
        .group_by(day, Search.adapter)
    )
    no_results = (
        select(
            day.label("day"),
            Search.adapter,
            zero.label("searches"),
            func.count().label("no_result"),
            *(zero.label(name) for name in ("clicked", "carted", "bought", "pos_sum", "pos_n")),
        )
        .where(_in_window(w), no_result())
        .group_by(day, Search.adapter)
    )
    return union_all(with_events, no_results)


def top_queries_statement(w: Window, n: int, *, no_result_only: bool) -> Select:
    """The `n` most searched normalised queries of the window (only searches without results
    when `no_result_only`), most first, with one spelling."""
    searches = func.count().label("n")
    stmt = select(Search.normalized_query, func.min(Search.query), searches).where(_in_window(w))
    if no_result_only:
        stmt = stmt.where(no_result())
    return (
        stmt.group_by(Search.normalized_query)
        .order_by(searches.desc(), Search.normalized_query)
        .limit(n)
    )


def log_span(session: Session) -> tuple[datetime, datetime] | None:
    """(first, last) created_at of the whole log, or None when it is empty: two index look-ups."""
    first = select(func.min(Search.created_at)).scalar_subquery()
    last = select(func.max(Search.created_at)).scalar_subquery()
    lo, hi = session.execute(select(first, last)).one()
    if lo is None or hi is None:
        return None
    return as_utc(lo), as_utc(hi)


def as_utc(value: datetime | str) -> datetime:
    """A created_at read through a scalar subquery (SQLite returns the stored text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def covered_share(w: Window, span: tuple[datetime, datetime] | None) -> float:
    """Share of the log's time span that the window covers (1 for an empty or one-instant log)."""
    if span is None or span[1] <= span[0]:
        return 1.0
    lo, hi = max(w.since, span[0]), min(w.until, span[1])
    return max(0.0, (hi - lo) / (span[1] - span[0]))


def group_counts(session: Session, w: Window) -> list[GroupCounts]:
    dialect = session.get_bind().dialect.name
    restrict = covered_share(w, log_span(session)) < RESTRICT_BELOW
    stmt = summary_statement(dialect, w, restrict_events=restrict)
    return [
        GroupCounts(as_date(day), adapter, *(int(v) for v in counts))
        for day, adapter, *counts in session.execute(stmt)
    ]


def top_queries(session: Session, w: Window, n: int, *, no_result_only: bool) -> list[QueryCount]:
    stmt = top_queries_statement(w, n, no_result_only=no_result_only)
    return [QueryCount(nq, q, int(count)) for nq, q, count in session.execute(stmt)]
