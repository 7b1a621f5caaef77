"""Reliability benchmark → bench/results/reliability.json (+ reliability.png).

Real processes on this machine: `ospo serve` over the demo index (`ospo bootstrap`; without
it, the 392-product ESCI sample),
driven by locust (`bench/locustfile.py`: a search, then an event batch of 3 impressions and a
click, at a fixed rate per simulated shopper), for `--duration` seconds per scenario:

| scenario          | database                 | fault, a third of the way in                  |
|-------------------|--------------------------|-----------------------------------------------|
| load_sqlite       | SQLite (embedded)        | none                                          |
| load_postgres     | PostgreSQL + Redis       | none                                          |
| postgres_restart  | PostgreSQL + Redis       | `pg_ctlcluster … restart`                     |
| redis_restart     | PostgreSQL + private Redis | Redis killed, started again 5 s later       |
| vllm_restart      | SQLite, vLLM, base rewrites | vLLM's process group killed, restarted     |
| api_kill          | SQLite (embedded)        | API process group SIGKILLed, restarted 2 s on |
| worker_kill       | SQLite, `ospo worker`    | worker SIGKILLed; explain probed 30 s; restart |
| postgres_kill     | private PostgreSQL + Redis | postmaster SIGKILLed, restarted 2 s later   |

Each scenario records requests/s, p50/p99 per endpoint, statuses, and the promise checks:
events acknowledged (200) = events stored (counted in the database after the API stopped and
flushed its search log), searches answered = search rows stored (+ rows dropped for their
content, from `/metrics`), no 5xx other than a documented 503 while the database restarts, and
for vLLM the fallbacks counted on `/metrics`. Issue 22's SIGKILL scenarios check by id: every
answered search id logged, every event id acknowledged as stored in the database, no event
refused (each batch is valid, so a refusal could only be for a loss on our side), and the time
from the restart to the first search answered again (`recover_s`). The private PostgreSQL of
`postgres_kill` (initdb on a free port, run as the `postgres` user) leaves the shared server
that other work uses alone. A short version of each fault runs in
`make test` (tests/test_faults.py, tests/test_serving_vllm.py).

Run: `.venv/bin/python bench/reliability.py` (about 10 minutes; --help for options).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from harness.results import RESULTS, header, log, pyplot, save_figure, write_json
from harness.stack import (
    Api,
    Ospo,
    postgres_schema,
    private_postgres,
    redis_server,
    wait_http,
    wait_postgres,
)
from harness.timing import pct
from sqlalchemy import func, select

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Event, Search
from service.policy.server import free_port
from service.processes import GroupChild

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS
LOCUST = str(Path(sys.executable).with_name("locust"))
PG_URL = os.environ.get("OSPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEY = "reliability-bench-admin-key-0123"
SCENARIOS = (
    "load_sqlite", "load_postgres", "postgres_restart", "redis_restart", "vllm_restart",
    "api_kill", "worker_kill", "postgres_kill",
)  # fmt: skip
SQLITE_SCENARIOS = ("load_sqlite", "vllm_restart", "api_kill", "worker_kill")


def query_pool() -> list[str]:
    from service.catalog.formats import parse_chorus_labels

    labels = parse_chorus_labels(ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv")
    return sorted({lab.query.strip() for lab in labels if lab.query.strip()})


def restart_postgres() -> None:
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def until_searching(base: str, timeout: float = 300) -> float:
    """Seconds until `base` answers a search again (polled every 0.2 s)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            r = httpx.post(f"{base}/v1/search", json={"query": "usb hub", "k": 3}, timeout=5)
            if r.status_code == 200:
                return round(time.monotonic() - started, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not answer a search within {timeout} s")


def explain_probes(base: str, seconds: float) -> list[dict[str, Any]]:
    """`GET /admin/explain` every 2 s for `seconds`: status, error code, milliseconds."""
    probes = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        t = time.perf_counter()
        try:
            r = httpx.get(f"{base}/admin/explain", params={"query": "usb hub"},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
            status, code = r.status_code, (r.json().get("error") or {}).get("code")
        except httpx.HTTPError as e:
            status, code = 0, type(e).__name__
        probes.append({"at_s": round(time.monotonic() - started, 1), "status": status,
                       "code": code, "ms": round((time.perf_counter() - t) * 1000, 1)})  # fmt: skip
        time.sleep(2)
    return probes


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _policy_degraded(base: str, wait_s: float = 0.0) -> bool:
    """`/readyz`'s policy check, polled for up to `wait_s` until the API reports an outage."""
    deadline = time.monotonic() + wait_s
    while True:
        checks = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
        degraded = bool(checks.get("policy", {}).get("degraded"))
        if degraded or time.monotonic() > deadline:
            return degraded
        time.sleep(0.5)


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample over the lines whose labels contain `labels`."""
    prefix = name + ("{" if labels else " ")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and labels in line
    )


def run_scenario(name: str, args: argparse.Namespace, work: Path, queries: Path) -> dict:
    data = work / name
    shutil.copytree(args.index, data / "indexes")
    env = {
        "OSPO_DATA_DIR": str(data),
        "OSPO_ADMIN_API_KEY": KEY,
        "OSPO_POLICY_BACKEND": "none",
        "OSPO_RATE_LIMIT_SEARCH": "",  # one locust client is every shopper: limits off
        "OSPO_RATE_LIMIT_EVENTS": "",
        "OSPO_LOG_LEVEL": "WARNING",
    }
    cleanup: list[Callable[[], None]] = []
    fault: Callable[[], dict[str, Any]] | None = None
    extra: list[GroupChild] = []
    if name in SQLITE_SCENARIOS:
        url = f"sqlite:///{data / 'ospo.db'}"
    elif name == "postgres_kill":
        pg_root = Path(tempfile.mkdtemp(prefix="ospo-pg-"))  # the postgres user must reach it
        pg, url = private_postgres(free_port(), pg_root)
        extra.append(pg)
        cleanup.append(lambda: shutil.rmtree(pg_root, ignore_errors=True))

        def fault() -> dict[str, Any]:
            pg.kill()  # SIGKILL: the postmaster and its backends, no shutdown checkpoint
            pg.proc.wait(30)
            time.sleep(2)
            started = time.monotonic()
            pg.start()
            wait_postgres(url, pg)  # crash recovery replays PostgreSQL's own WAL
            return {
                "fault": "PostgreSQL SIGKILLed, restarted after 2 s",
                "restart_s": round(time.monotonic() - started, 2),
                "recover_s": until_searching(base),
            }
    else:
        url, drop = postgres_schema(PG_URL, "ospo_rel")
        cleanup.append(drop)
    env["OSPO_DATABASE_URL"] = url
    upgrade(url)
    if name in ("load_postgres", "postgres_restart", "postgres_kill"):
        env["OSPO_REDIS_URL"] = "redis://127.0.0.1:6379/14"
    if name == "api_kill":

        def fault() -> dict[str, Any]:
            api.kill()  # SIGKILL to every process of the API: no shutdown, no flush
            api.proc.wait(30)
            time.sleep(2)
            started = time.monotonic()
            api.start()  # start-up replays the search log's journal the dead ones left
            until_searching(base)
            return {
                "fault": "API process group SIGKILLed, restarted after 2 s",
                "recover_s": round(time.monotonic() - started, 2),
            }

    if name == "worker_kill":
        from service.workers import live_queues

        env["OSPO_WORKER_TIMEOUT_S"] = "3"
        worker = Ospo(["worker"], env, data / "worker.log")
        extra.append(worker)
        log("worker starting")
        deadline = time.monotonic() + 300
        while "celery" not in live_queues(url):
            assert worker.alive() and time.monotonic() < deadline, worker.tail()
            time.sleep(0.5)

        def fault() -> dict[str, Any]:
            worker.kill()
            worker.proc.wait(30)
            probes = explain_probes(base, 30)  # what a console user sees meanwhile
            started = time.monotonic()
            worker.start()
            while "celery" not in live_queues(url):
                assert worker.alive(), worker.tail()
                time.sleep(0.5)
            return {
                "fault": "worker SIGKILLed, restarted after its explain probes (30 s)",
                "explain_while_down": probes,
                "worker_back_s": round(time.monotonic() - started, 2),
                "recover_s": until_searching(base),
            }

    if name == "redis_restart":
        port = free_port()
        redis = redis_server(port, data / "redis.log")
        extra.append(redis)
        env["OSPO_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        env["OSPO_RATE_LIMIT_SEARCH"] = "1000000/second"  # counters in Redis: the path runs

        def fault() -> dict[str, Any]:
            redis.kill()
            redis.proc.wait(10)
            time.sleep(5)
            redis.start()
            return {"fault": "redis killed (SIGKILL), started again after 5 s"}

    if name == "postgres_restart":

        def fault() -> dict[str, Any]:
            started = time.monotonic()
            restart_postgres()
            return {"fault": "pg_ctlcluster restart", "restart_s": time.monotonic() - started}

    if name == "vllm_restart":
        from service.policy.models import prepare_policy_model

        vport = free_port()
        model = prepare_policy_model(ROOT / "var" / "models")
        env.update({
            "OSPO_POLICY_BACKEND": "vllm", "OSPO_VLLM_URL": f"http://127.0.0.1:{vport}",
            "OSPO_VLLM_PORT": str(vport), "OSPO_POLICY_MODEL": str(model),
            "OSPO_SERVE_BASE_POLICY": "true", "OSPO_REWRITE_MISSES": "background",
            "OSPO_REWRITE_BUDGET_MS": "0",
        })  # fmt: skip
        vllm = Ospo(["policy", "serve"], env, data / "vllm.log")
        extra.append(vllm)
        log("vLLM starting")
        wait_http(f"http://127.0.0.1:{vport}/health", vllm, timeout=600)

        def fault() -> dict[str, Any]:
            vllm.kill(sessions=True)
            vllm.proc.wait(10)
            assert not _answers(f"http://127.0.0.1:{vport}/health"), "vLLM survived the kill"
            seen_down = _policy_degraded(base, wait_s=15)
            time.sleep(5)
            started = time.monotonic()
            vllm.start()
            wait_http(f"http://127.0.0.1:{vport}/health", vllm, timeout=600)
            restart_s = time.monotonic() - started
            deadline = time.monotonic() + 30
            while _policy_degraded(base) and time.monotonic() < deadline:
                time.sleep(0.5)
            return {
                "fault": "vLLM process groups killed, restarted after 5 s",
                "vllm_restart_s": round(restart_s, 1),
                "readyz_degraded_while_down": seen_down,
                "readyz_recovered": not _policy_degraded(base),
            }

    # Started once the other servers listen, so that its free port cannot be one of theirs; the
    # fault closures above read `base` when they run.
    api = Api(env, data / "api.log", workers=args.api_workers)
    base = api.url
    try:
        api.wait_ready("/healthz")
        report = data / "locust.json"
        locust_env = {
            "OSPO_LOAD_QUERIES": str(queries),
            "OSPO_LOAD_REPORT": str(report),
            "OSPO_LOAD_TASKS_PER_USER_S": str(args.tasks_per_user_s),
        }
        log(f"{name}: {args.users} shoppers × {args.tasks_per_user_s} searches/s for "
            f"{args.duration} s")  # fmt: skip
        load = subprocess.Popen(
            [LOCUST, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "--only-summary",
             "-u", str(args.users), "-r", str(args.users), "-t", f"{args.duration}s",
             "--host", base, "--stop-timeout", "10"],
            env={**os.environ, **locust_env}, stdout=(data / "locust.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        fault_info: dict[str, Any] = {}
        if fault is not None:
            time.sleep(args.duration / 3)
            fault_at = time.monotonic()
            log(f"{name}: fault")
            fault_info = fault()
            fault_info["at_s"] = args.duration / 3
            fault_info["took_s"] = time.monotonic() - fault_at
        load.wait(args.duration + 120)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        api.stop()  # SIGTERM: the search log flushes before the process exits
        with session_scope(url) as s:  # before the servers in `extra` stop
            stored = {
                "events": set(s.scalars(select(Event.event_id))),
                "searches": set(s.scalars(select(Search.id))),
                "events_unknown_search": s.scalar(
                    select(func.count()).select_from(Event).where(Event.search_known.is_(False))
                ),
            }
    finally:
        api.stop()
        for p in extra:
            p.stop()
    for c in cleanup:
        c()
    load_report = json.loads(report.read_text())
    return summarise(name, load_report, metrics, stored, fault_info, args)


def summarise(name, rep, metrics, stored, fault_info, args):  # type: ignore[no-untyped-def]
    stored_events, stored_searches = len(stored["events"]), len(stored["searches"])
    lost_searches = set(rep.get("answered_ids", [])) - stored["searches"]
    lost_events = set(rep.get("acknowledged_ids", [])) - stored["events"]
    secs = rep["seconds"]
    search_ms = [ms for b in secs.values() for ms in b["search_ms"]]
    events_ms = [ms for b in secs.values() for ms in b["events_ms"]]
    requests = len(search_ms) + len(events_ms)
    statuses = rep["statuses"]
    server_errors = {
        ep: {code: n for code, n in codes.items() if int(code) >= 500}
        for ep, codes in statuses.items()
    }
    totals = rep["totals"]
    dropped = metric(metrics, "ospo_search_log_dropped_total")
    fallbacks = metric(metrics, "ospo_searches_total", 'rewrite_source="fallback"')

    def p(xs: list[float], q: float) -> float | None:
        return pct(xs, q, ndigits=1)

    out = {
        "scenario": name,
        "users": args.users,
        "searches_per_user_s": args.tasks_per_user_s,
        **fault_info,
        "duration_s": args.duration,
        "requests": requests,
        "requests_per_s": round(requests / args.duration, 1),
        "search": {"n": len(search_ms), "p50_ms": p(search_ms, 50), "p99_ms": p(search_ms, 99)},
        "events": {"n": len(events_ms), "p50_ms": p(events_ms, 50), "p99_ms": p(events_ms, 99)},
        "statuses": statuses,
        "server_errors": server_errors,
        "events_acknowledged": totals["events_acknowledged"],
        "events_stored": stored_events,
        "searches_answered": totals["searches_answered"],
        "searches_stored": stored_searches,
        "search_rows_dropped": dropped,
        "answered_searches_not_logged": len(lost_searches),
        "acknowledged_events_not_stored": len(lost_events),
        "events_refused": totals.get("events_refused", 0),
        "events_naming_unknown_search": stored["events_unknown_search"],
        "failed_searches": sum(n for code, n in statuses["search"].items() if int(code) != 200),
        "fallbacks": fallbacks,
        "per_second": {
            s: {
                "requests": len(b["search_ms"]) + len(b["events_ms"]),
                "5xx": b["5xx"],
                "503": b["503"],
                "search_p99_ms": p(b["search_ms"], 99),
            }
            for s, b in secs.items()
        },  # fmt: skip
    }
    only_503 = all(set(codes) <= {"503"} for codes in server_errors.values())
    out["promise"] = {
        "acknowledged_equals_stored": totals["events_acknowledged"] == stored_events,
        "no_acknowledged_event_lost": not lost_events,
        "no_event_refused": not totals.get("events_refused", 0),
        # by id (a search answered just before a kill may be logged without its answer
        # reaching the client, so the counts alone may differ the other way)
        "searches_answered_are_stored": not lost_searches,
        "no_server_error": not any(server_errors.values()),
        "only_documented_503": only_503,
        "no_failed_search": not server_errors.get("search"),
    }
    return out


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.6 * len(results)), sharex=True)
    for ax, r in zip(np.atleast_1d(axes), results, strict=True):
        xs = sorted(int(s) for s in r["per_second"])
        rps = [r["per_second"][str(s)]["requests"] for s in xs]
        p99 = [r["per_second"][str(s)]["search_p99_ms"] or np.nan for s in xs]
        bad = [r["per_second"][str(s)]["5xx"] + r["per_second"][str(s)]["503"] for s in xs]
        ax.plot(xs, rps, label="requests/s", color="tab:blue")
        ax.bar(xs, bad, color="tab:red", label="5xx (503 included)")
        ax2 = ax.twinx()
        ax2.plot(xs, p99, color="tab:orange", label="search p99 ms")
        ax2.set_ylabel("p99 ms")
        if "at_s" in r:
            span = (r["at_s"], r["at_s"] + r["took_s"])
            ax.axvspan(*span, color="grey", alpha=0.3, label=r["fault"][:40])
        ax.set_title(
            f"{r['scenario']}: {r['requests_per_s']} req/s, "
            f"acked {r['events_acknowledged']} = stored {r['events_stored']}"
        )
        ax.set_ylabel("req/s")
        ax.legend(loc="lower left", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("second of the run")
    fig.tight_layout()
    save_figure(fig, path)


def write_results(args: argparse.Namespace, argv: list[str] | None, results: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep the scenarios this run did not repeat
        kept = [
            r
            for r in json.loads(args.out.read_text())["scenarios"]
            if r["scenario"] not in {x["scenario"] for x in results}
        ]
        results = sorted(kept + results, key=lambda r: SCENARIOS.index(r["scenario"]))
    write_json(args.out, {
        **header(__file__, argv),
        "note": "scenarios may come from several runs of the command (see each one's users)",
        "offered_load": {"users": args.users, "searches_per_user_s": args.tasks_per_user_s,
                         "requests_per_search": 2},  # fmt: skip
        "scenarios": results,
    }, indent=1)  # fmt: skip
    plot(results, args.out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per scenario")
    parser.add_argument("--users", type=int, default=50, help="simulated shoppers")
    parser.add_argument(
        "--tasks-per-user-s",
        type=float,
        default=2.2,
        help="searches per shopper per second (each followed by an event batch)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=2, help="uvicorn worker processes (one per core)"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=OUT / "reliability.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ospo-reliability-"))
    if (ROOT / "var" / "indexes").is_dir():
        args.index = ROOT / "var" / "indexes"  # the demo index of `ospo bootstrap`
    else:  # the 392-product ESCI sample (bench/search_log.py builds it)
        from search_log import index_root

        args.index = index_root(work)
    log(f"index: {args.index}")
    queries = work / "queries.json"
    queries.write_text(json.dumps(query_pool()))
    results: list[dict] = []
    for name in args.scenarios.split(","):
        results.append(run_scenario(name, args, work, queries))
        r = results[-1]
        log(f"{name}: {r['requests_per_s']} req/s, search p99 {r['search']['p99_ms']} ms, "
            f"promise {r['promise']}")  # fmt: skip
        write_results(args, argv, results)  # after each one: a later failure keeps it
    log(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
