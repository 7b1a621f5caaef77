"""Search-analytics benchmark on PostgreSQL → bench/results/analytics.json (+ analytics.png).

In a private schema (created here, dropped at the end) migrated to 0003, it generates a month of
search log with server-side SQL (generate_series, INSERT … SELECT; nothing crosses the wire):

- 1,000,000 searches over 30 days, in time order (an append-only log), queries drawn from a
  20,000-query vocabulary with a Zipf-like law (index ⌊exp(U · ln 20000)⌋, U uniform), one
  spelling in five upper-cased; the products a query shows fixed per query; ~6.7 % of the
  vocabulary (every 15th query) shows nothing. Adapters: 20 % none (NULL); otherwise "ospo-a" in
  the first 15 days and "ospo-b" after it was promoted.
- events, drawn per search from hashes of its id (reproducible): an impression for half of the
  searches (position 1); for searches with results, a click for 30 % (position 1 + ⌊-2.5 ln V⌋,
  capped at 10) and a second click for 40 % of those; add_to_cart for 25 % of the clicked;
  purchase for 40 % of the carted; every event after its search, with the shown position.

then VACUUM ANALYZE (what autovacuum does to an insert-only table), upgrades to 0004 (timing
the index builds), ANALYZE, and times the three statements of service/repositories/analytics.py
— the (day, adapter) summary, the top queries, the top no-result queries — for five windows
(30 days; the last day; the last hour; 30 days of one adapter; 7 days of searches with no
adapter), in the service's transaction settings (repository `begin`), against variants:

- "without 0004": both indexes of 0004 dropped inside the measuring transaction (DDL is
  transactional in PostgreSQL; every measuring transaction is rolled back, so the DROP is
  undone with it and the planner plans as at revision 0003);
- ablations: one index of 0004 dropped the same way, for the statements it is meant to serve
  (the adapter index on the adapter windows; elsewhere "without 0004" is already without the
  no-result index alone, as the adapter index cannot serve a window of all adapters);
- the summary with the other choice of restricting the event summary to the window
  (`restrict_events`), and with PostgreSQL's parallel workers allowed (the server's setting);
- candidates measured and left out of 0004: an index events(search_id, type, position) and
  statistics on the (day, adapter) expression, created inside the measuring transaction.

The machine is shared (other sessions run tests meanwhile), so the variants whose setup is
cheap are interleaved: `--repeat` rounds after a warm-up round, each round running every such
variant once, so a burst of load falls on all of them alike; a candidate (its setup builds an
index or statistics) runs `--repeat` times after a warm-up in one transaction. Every variant is
explained once (EXPLAIN ANALYZE, BUFFERS, TIMING OFF; the node tree, one line per node). Also
recorded: the whole service call (what `GET /admin/analytics` runs) for 30 days and the last
day, an independent count of the 30-day totals (plain distinct counts) checking the service's,
index sizes, the load average, the wall time.

Run: `.venv/bin/python bench/analytics.py` (PostgreSQL at OSPO_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test; ~7 min on 2 busy cores). `--searches 100000` for a
quick look (not committed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from harness.results import header, loadavg, pyplot, save_figure, write_json
from harness.stack import postgres_schema
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from service.db.engine import get_engine, get_sessionmaker
from service.db.migrate import upgrade
from service.repositories.analytics import (
    PG_DAY,
    RESTRICT_BELOW,
    Window,
    begin,
    covered_share,
    log_span,
    summary_statement,
    top_queries_statement,
)
from service.services.analytics import search_analytics

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("OSPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
END = datetime(2026, 11, 1, tzinfo=UTC)  # the generated month is [END - 30 days, END)
SPAN_DAYS = 30
VOCABULARY = 20_000
ADAPTER_INDEX = "ix_searches_adapter_created_at"
NO_RESULT_INDEX = "ix_searches_no_result"
WITHOUT_0004 = [f"DROP INDEX {ADAPTER_INDEX}", f"DROP INDEX {NO_RESULT_INDEX}"]
CANDIDATE_EVENTS_INDEX = ["CREATE INDEX ix_candidate_events ON events (search_id, type, position)"]
CANDIDATE_DAY_STATISTICS = [
    f"CREATE STATISTICS st_candidate_day ON ({PG_DAY}), adapter FROM searches",
    "ANALYZE searches",
]
STATEMENTS = ("summary", "top queries", "top no-result queries")
console = Console()


def generate(conn: psycopg.Connection, n: int) -> dict[str, float]:
    """Fill searches and events (module docstring); returns seconds per step."""
    start = END - timedelta(days=SPAN_DAYS)
    seconds: dict[str, float] = {}

    def step(name: str, sql: str, **params: Any) -> None:
        t = time.perf_counter()
        conn.execute(sql, params or None)
        seconds[name] = round(time.perf_counter() - t, 2)
        console.log(f"  {name}: {seconds[name]} s")

    step(
        "vocabulary",
        """
        CREATE TEMP TABLE vocab AS
        SELECT q, 'query ' || q || ' term' || (q %% 97) AS nq,
               CASE WHEN q %% 15 = 0 THEN '[]'::json
                    ELSE (SELECT json_agg('p' || ((q * 7919 + i * 104729) %% 50000))
                          FROM generate_series(1, 10) i) END AS pids
        FROM generate_series(1, %(vocab)s) q
        """,
        vocab=VOCABULARY,
    )
    step(
        "searches",
        """
        INSERT INTO searches (id, query, normalized_query, rewrite, rewrite_source, adapter,
                              prompt_version, k, product_ids, scores, index_version, latency_ms,
                              created_at)
        SELECT md5('s' || g)::uuid::text,
               CASE WHEN g %% 5 = 0 THEN upper(v.nq) ELSE v.nq END, v.nq, v.nq || ' expanded',
               'cache',
               CASE WHEN g %% 5 = 1 THEN NULL
                    WHEN g <= %(n)s / 2 THEN 'ospo-a' ELSE 'ospo-b' END,
               'v1', 10, v.pids, '[]'::json, 'idx-1', 12.5,
               %(start)s::timestamptz + (g - 1) * (interval '1 day' * %(span)s / %(n)s)
        FROM (SELECT g, floor(exp(random() * ln(%(vocab)s)))::int AS q
              FROM generate_series(1, %(n)s) g) d
        JOIN vocab v USING (q)
        """,
        n=n,
        start=start,
        span=SPAN_DAYS,
        vocab=VOCABULARY,
    )
    # Per search, uniform draws in [0, 1) from hashes of its id: reproducible, no state.
    step(
        "draws",
        """
        CREATE TEMP TABLE draws AS
        SELECT *, least(10, 1 + floor(-2.5 * ln(u_pos)))::int AS pos1
        FROM (
        SELECT id, created_at, product_ids,
               json_array_length(product_ids) > 0 AS shown,
               (abs(hashtext(id || 'i')) % 1000000) / 1e6 AS u_imp,
               (abs(hashtext(id || 'c')) % 1000000) / 1e6 AS u_click,
               (abs(hashtext(id || 'd')) % 1000000) / 1e6 AS u_click2,
               (abs(hashtext(id || 'a')) % 1000000) / 1e6 AS u_cart,
               (abs(hashtext(id || 'p')) % 1000000) / 1e6 AS u_buy,
               (abs(hashtext(id || 'q')) % 1000000 + 0.5) / 1e6 AS u_pos
        FROM searches) u
        """,
    )
    step(
        "events",
        """
        INSERT INTO events (event_id, search_id, product_id, type, ts, position, received_at)
        SELECT e.search_id || ':' || e.type || ':' || e.position, e.search_id,
               e.pids ->> (e.position - 1), e.type, e.at, e.position, e.at
        FROM (
            SELECT id AS search_id, product_ids AS pids, 'impression' AS type, 1 AS position,
                   created_at + interval '1 second' AS at
            FROM draws WHERE shown AND u_imp < 0.5
            UNION ALL
            SELECT id, product_ids, 'click', pos1, created_at + interval '20 seconds'
            FROM draws WHERE shown AND u_click < 0.3
            UNION ALL
            SELECT id, product_ids, 'click', 1 + pos1 % 10, created_at + interval '60 seconds'
            FROM draws WHERE shown AND u_click < 0.3 AND u_click2 < 0.4
            UNION ALL
            SELECT id, product_ids, 'add_to_cart', pos1, created_at + interval '2 minutes'
            FROM draws WHERE shown AND u_click < 0.3 AND u_cart < 0.25
            UNION ALL
            SELECT id, product_ids, 'purchase', pos1, created_at + interval '1 hour'
            FROM draws WHERE shown AND u_click < 0.3 AND u_cart < 0.25 AND u_buy < 0.4
        ) e
        """,
    )
    conn.execute("DROP TABLE draws")
    conn.execute("DROP TABLE vocab")
    step("vacuum_analyze", "VACUUM ANALYZE searches, events")
    return seconds


def windows() -> dict[str, Window]:
    return {
        "30 days": Window(END - timedelta(days=30), END),
        "last day": Window(END - timedelta(days=1), END),
        "last hour": Window(END - timedelta(hours=1), END),
        "30 days, adapter ospo-b": Window(
            END - timedelta(days=30), END, only_adapter=True, adapter="ospo-b"
        ),
        "7 days, no adapter": Window(END - timedelta(days=7), END, only_adapter=True),
    }


@dataclass
class Variant:
    statement: str  # one of STATEMENTS
    name: str  # "service" for the statement as the service runs it
    stmt: Executable
    setup: list[str] = field(default_factory=list)  # SQL run first in its transaction
    interleaved: bool = True  # False: its setup is costly, all its runs share one transaction


def variants(w: Window, span: tuple[datetime, datetime] | None) -> list[Variant]:
    restrict = covered_share(w, span) < RESTRICT_BELOW
    summary = summary_statement("postgresql", w, restrict_events=restrict)
    top = top_queries_statement(w, 10, no_result_only=False)
    no_result = top_queries_statement(w, 10, no_result_only=True)
    out = [
        Variant("summary", "service", summary),
        Variant("summary", "without 0004", summary, WITHOUT_0004),
        Variant(
            "summary",
            "other plan choice",
            summary_statement("postgresql", w, restrict_events=not restrict),
        ),
        Variant(
            "summary",
            "parallel plans allowed",
            summary,
            ["RESET max_parallel_workers_per_gather"],
        ),
        Variant(
            "summary",
            "+ candidate index events(search_id, type, position)",
            summary,
            CANDIDATE_EVENTS_INDEX,
            interleaved=False,
        ),
        Variant("top queries", "service", top),
        Variant("top queries", "without 0004", top, WITHOUT_0004),
        Variant("top no-result queries", "service", no_result),
        Variant("top no-result queries", "without 0004", no_result, WITHOUT_0004),
    ]
    if w.only_adapter:
        drop = [f"DROP INDEX {ADAPTER_INDEX}"]
        out.append(Variant("summary", f"without {ADAPTER_INDEX}", summary, drop))
        out.append(Variant("top queries", f"without {ADAPTER_INDEX}", top, drop))
    if w.since == END - timedelta(days=30):
        out.append(
            Variant(
                "summary",
                "+ candidate statistics on (day, adapter)",
                summary,
                CANDIDATE_DAY_STATISTICS,
                interleaved=False,
            )
        )
    return out


def _sql(stmt: Executable) -> str:
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


@contextmanager
def measuring(url: str, setup: list[str]) -> Iterator[Session]:
    """A transaction in the service's settings, after `setup`; always rolled back."""
    s = get_sessionmaker(url)()
    try:
        begin(s)
        for sql in setup:
            s.execute(text(sql))
        yield s
    finally:
        s.rollback()
        s.close()


def _timed(s: Session, stmt: Executable) -> tuple[float, int]:
    t = time.perf_counter()
    rows = s.execute(stmt).fetchall()
    return (time.perf_counter() - t) * 1000, len(rows)


def _explain(s: Session, stmt: Executable) -> dict[str, Any]:
    sql = f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) {_sql(stmt)}"
    return s.execute(text(sql)).scalar_one()[0]


def plan_lines(node: dict[str, Any], depth: int = 0) -> list[str]:
    """One line per plan node: type, relation and index, rows and loops, spills."""
    name = node["Node Type"]
    if node.get("Strategy") and node["Strategy"] != "Plain":
        name = f"{node['Strategy']} {name}"
    if node.get("Parent Relationship") == "InitPlan" or node.get("Subplan Name"):
        name = f"{node.get('Subplan Name', 'InitPlan')}: {name}"
    on = f" on {node['Relation Name']}" if "Relation Name" in node else ""
    idx = f" using {node['Index Name']}" if "Index Name" in node else ""
    extra = ""
    if node.get("Heap Fetches") is not None:
        extra += f" heap_fetches={node['Heap Fetches']}"
    if node.get("Workers Launched"):
        extra += f" workers={node['Workers Launched']}"
    if node.get("Temp Written Blocks"):
        extra += f" temp_written_blocks={node['Temp Written Blocks']}"
    if node.get("Sort Method"):
        extra += f" sort={node['Sort Method']}"
    if node.get("HashAgg Batches", 1) > 1 or node.get("Hash Batches", 1) > 1:
        extra += f" batches={node.get('HashAgg Batches') or node.get('Hash Batches')}"
    line = (
        f"{'  ' * depth}{name}{on}{idx} rows={node.get('Actual Rows')} "
        f"loops={node.get('Actual Loops')}{extra}"
    )
    out = [line]
    for child in node.get("Plans", []):
        out.extend(plan_lines(child, depth + 1))
    return out


def measure(url: str, repeat: int) -> dict[str, Any]:
    """Per window: the plan choice, and per statement and variant the runs, their median, the
    rows, the plan (module docstring)."""
    with get_sessionmaker(url)() as s:
        span = log_span(s)
    out: dict[str, Any] = {}
    for wname, w in windows().items():
        share = covered_share(w, span)
        out[wname] = {
            "covered_share": round(share, 3),
            "restrict_events": share < RESTRICT_BELOW,
            "statements": {name: {} for name in STATEMENTS},
        }
        runs: dict[int, list[float]] = {}
        rows: dict[int, int] = {}
        plans: dict[int, dict[str, Any]] = {}
        vs = variants(w, span)
        for round_ in range(repeat + 1):  # round 0 warms up
            for i, v in enumerate(vs):
                if v.interleaved:
                    with measuring(url, v.setup) as s:
                        ms, rows[i] = _timed(s, v.stmt)
                    if round_:
                        runs.setdefault(i, []).append(ms)
        for i, v in enumerate(vs):
            with measuring(url, v.setup) as s:
                if not v.interleaved:
                    _timed(s, v.stmt)
                    for _ in range(repeat):
                        ms, rows[i] = _timed(s, v.stmt)
                        runs.setdefault(i, []).append(ms)
                plans[i] = _explain(s, v.stmt)
        for i, v in enumerate(vs):
            ms = statistics.median(runs[i])
            out[wname]["statements"][v.statement][v.name] = {
                "median_ms": round(ms, 1),
                "runs_ms": [round(r, 1) for r in runs[i]],
                "rows": rows[i],
                "explain_execution_ms": round(plans[i]["Execution Time"], 1),
                "plan": plan_lines(plans[i]["Plan"]),
            }
            console.log(f"  {wname} · {v.statement} · {v.name}: {ms:.0f} ms")
    return out


def independent_totals(conn: psycopg.Connection) -> dict[str, Any]:
    """The 30-day totals by a plain formulation (distinct counts over joins), to check the
    service's at scale; the generated month is exactly the window."""
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM searches),
               (SELECT count(*) FROM searches WHERE json_array_length(product_ids) = 0),
               (SELECT count(DISTINCT search_id) FROM events WHERE type = 'click'),
               (SELECT count(DISTINCT search_id) FROM events WHERE type = 'add_to_cart'),
               (SELECT count(DISTINCT search_id) FROM events WHERE type = 'purchase'),
               (SELECT count(position) FROM events WHERE type = 'click'),
               (SELECT avg(position)::float8 FROM events WHERE type = 'click')
        """
    ).fetchone()
    names = (
        "searches", "no_result_searches", "clicked_searches", "add_to_cart_searches",
        "purchase_searches", "positioned_clicks", "mean_click_position",
    )  # fmt: skip
    out = dict(zip(names, row, strict=True))
    out["mean_click_position"] = round(out["mean_click_position"], 9)
    return out


def sizes(conn: psycopg.Connection) -> dict[str, Any]:
    rows = conn.execute(
        """
        SELECT c.relname, pg_relation_size(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relname IN ('searches', 'events')
           OR (n.nspname = current_schema() AND c.relkind = 'i'
               AND (c.relname LIKE 'ix_searches%%' OR c.relname LIKE 'ix_events%%'))
        ORDER BY 1
        """
    ).fetchall()
    return {name: round(size / 2**20, 1) for name, size in rows}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    labels, before, after = [], [], []
    for wname, per in result["timings"].items():
        for sname, vs in per["statements"].items():
            labels.append(f"{wname} · {sname}")
            before.append(vs["without 0004"]["median_ms"])
            after.append(vs["service"]["median_ms"])
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(labels) + 1.4))
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], before, height=0.4, label="without 0004's indexes")
    ax.barh([y - 0.2 for y in ys], after, height=0.4, label="with 0004 (as served)")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"median ms of {result['repeat']} interleaved runs (log scale)")
    ax.set_title(f"/admin/analytics statements, PostgreSQL, {result['searches']:,} searches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--searches", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/analytics.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    url, drop_schema = postgres_schema(PG_URL, "ospo_bench")
    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        server = admin.execute("SELECT version()").fetchone()[0]
        settings = dict(
            admin.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                "'work_mem', 'max_parallel_workers_per_gather', 'random_page_cost', "
                "'effective_cache_size', 'jit')"
            ).fetchall()
        )
    result: dict[str, Any] = {
        **header(__file__, argv),
        "postgres": {"version": server, "settings": settings},
        "searches": args.searches,
        "repeat": args.repeat,
        # The machine is shared (other sessions' tests run meanwhile): the load says how much.
        "load_average_1_5_15": {"start": loadavg()},
    }
    try:
        console.rule(f"schema {schema}: migrate to 0003, generate {args.searches:,} searches")
        upgrade(url, "0003")
        with psycopg.connect(url, autocommit=True) as conn:
            result["generate_s"] = generate(conn, args.searches)
            result["counts"] = dict(
                conn.execute(
                    "SELECT 'searches', count(*) FROM searches UNION ALL "
                    "SELECT 'events ' || type, count(*) FROM events GROUP BY type"
                ).fetchall()
            )
        console.log(result["counts"])
        console.rule("upgrade to 0004 (analytics indexes), ANALYZE")
        t = time.perf_counter()
        upgrade(url, "0004")
        result["create_indexes_s"] = round(time.perf_counter() - t, 2)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE searches, events")
            result["sizes_mib"] = sizes(conn)
        console.log(f"indexes built in {result['create_indexes_s']} s; {result['sizes_mib']}")
        console.rule(f"statements and variants, {args.repeat} interleaved rounds")
        result["timings"] = timings = measure(url, args.repeat)
        result["service_call_ms"] = {}
        for wname, days in (("30 days", 30), ("last day", 1)):
            service_runs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = search_analytics(url, until=END, days=days)
                service_runs.append((time.perf_counter() - t) * 1000)
            result["service_call_ms"][wname] = {
                "median": round(statistics.median(service_runs), 1),
                "runs": [round(r, 1) for r in service_runs],
            }
            console.log(f"  service call, {wname}: {statistics.median(service_runs):.0f} ms")
            if days == 30:
                totals = out.totals.model_dump()
        result["totals_30_days"] = totals
        with psycopg.connect(url, autocommit=True) as conn:
            check = independent_totals(conn)
        mine = {k: totals[k] for k in check}
        mine["mean_click_position"] = round(mine["mean_click_position"], 9)
        result["independent_check"] = {"totals": check, "matches": check == mine}
        console.log(f"independent check of the totals: {result['independent_check']['matches']}")
    finally:
        get_engine.cache_clear()
        drop_schema()
        console.log(f"dropped schema {schema}")
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["load_average_1_5_15"]["end"] = loadavg()
    table = Table(title="median ms (ratio: variant / as served)")
    for col in ("window", "statement", "variant", "median ms", "ratio"):
        table.add_column(col)
    for wname, per in timings.items():
        for sname, vs in per["statements"].items():
            served = vs["service"]["median_ms"]
            for vname, r in vs.items():
                table.add_row(
                    wname, sname, vname, f"{r['median_ms']}", f"{r['median_ms'] / served:.2f}"
                )
    console.print(table)
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    console.log(f"wrote {args.out} and {args.out.with_suffix('.png')}; wall {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
