"""What durable search logging costs → bench/results/search_log.json.

Issue 22: a search is durable as its answer leaves; the candidates are measured against
today's buffered writer (memory only) in one run, on this machine:

1. **request path, in process**: the time `SearchLogWriter.submit` adds to a search, p50/p99
   over `--rows` real search rows submitted one after another (the background writer commits
   to SQLite meanwhile), for
   - `memory`: today's writer (buffer only; a killed process loses what it buffered);
   - `journal`: the chosen one, the buffer plus one `write(2)` of the row to the write-ahead
     file (survives kill -9 and OOM; fsync'd per commit batch by the writer thread);
   - `journal_fsync`: the same plus an fsync before answering (survives a power loss too);
   - `database`: the row committed to SQLite before answering (`OSPO_SEARCH_LOG_BACKGROUND=false`).
2. **end to end** (the issue's goal: API p50 at concurrency 1 within +10% of today's): two
   `ospo serve` processes over the same index, one with `OSPO_SEARCH_LOG_JOURNAL=false`, one
   with the default journal, searched alternately (A, B, A, B, … so that both see the same
   machine state) by one client; p50/p99 of each and their ratio. Then every search answered is
   counted in the database.

The index is `var/indexes` when `ospo bootstrap` made one, else the 392-product ESCI sample.

Run: `.venv/bin/python bench/search_log.py` (about 2 minutes on 2 cores; --help for sizes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from harness.results import RESULTS, header, log, write_json
from harness.stack import Api
from harness.timing import percentiles
from sqlalchemy import func, select

from service.db.engine import session_scope
from service.db.migrate import upgrade
from service.db.models import Search, utcnow
from service.services.search_journal import encode
from service.services.search_log import SearchLogWriter

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "search_log.json"


def row(i: int) -> dict[str, Any]:
    """A search row as the search service logs it (10 results)."""
    return {
        "id": str(uuid.uuid4()), "query": f"usb c charging cable {i}",
        "normalized_query": f"usb c charging cable {i}", "rewrite": f"usb c charging cable {i}",
        "rewrite_source": "none", "adapter": None, "prompt_version": None, "k": 10,
        "product_ids": [f"B0{i:08d}{j}" for j in range(10)],
        "scores": [round(1 / (j + 1), 6) for j in range(10)], "index_version": "v1",
        "latency_ms": 12.5, "user_id": "u1", "session_id": "s1", "created_at": utcnow(),
        "filters": None, "rules": None, "explore_pair": None, "explore_swapped": None,
        "comparison_id": None, "teams": None,
    }  # fmt: skip


def submit_costs(work: Path, n: int) -> dict[str, dict[str, float]]:
    """Microseconds `submit` takes per row, for each way of logging."""
    out: dict[str, dict[str, float]] = {}
    for name in ("memory", "journal", "journal_fsync", "database"):
        url = f"sqlite:///{work / f'submit-{name}.db'}"
        upgrade(url)
        writer = SearchLogWriter(
            url,
            background=name != "database",
            journal_dir=work / f"journal-{name}" if name.startswith("journal") else None,
        )
        writer.start()
        rows = [row(i) for i in range(n)]
        us = []
        for r in rows:
            t = time.perf_counter()
            writer.submit(r)
            if name == "journal_fsync":
                with writer._cond:  # the fsync an answer would wait for
                    segment = writer._segment
                if segment is not None:
                    segment.sync()
            us.append((time.perf_counter() - t) * 1e6)
        writer.stop()
        with session_scope(url) as s:
            stored = s.scalar(select(func.count()).select_from(Search))
        out[name] = {**percentiles(us, ndigits=4, suffix="_us"), "stored": stored, "rows": n}
        log(f"submit {name}: p50 {out[name]['p50_us']:.1f} µs, p99 {out[name]['p99_us']:.1f} µs")
    base = out["memory"]["p50_us"]
    for name in out:
        out[name]["p50_vs_memory"] = round(out[name]["p50_us"] / base, 2)
    return out


def journal_line_bytes() -> int:
    return len(encode(row(0)))


def index_root(work: Path) -> Path:
    if (ROOT / "var" / "indexes").is_dir():
        return ROOT / "var" / "indexes"
    from service.catalog.formats import parse_esci_products
    from service.retrieval.embedder import get_embedder
    from service.retrieval.facets import FacetTable
    from service.retrieval.index import write_index

    records = parse_esci_products(ROOT / "data" / "esci" / "sample_2c_full_data.csv")
    products = [p for p, _ in records if p is not None]
    emb = get_embedder()
    root = work / "index"
    write_index(
        root, [p.id for p in products], [p.title for p in products],
        emb.encode([p.search_text for p in products]), emb.name, "flat",
        lexical_texts=[p.search_text for p in products],
        facets=FacetTable.build([p.brand for p in products], [p.attributes for p in products]),
    )  # fmt: skip
    return root


def end_to_end(work: Path, n: int, index: Path) -> dict[str, Any]:
    """Alternate searches between an API without and one with the journal."""
    servers: dict[str, tuple[Api, str, str]] = {}
    try:
        for name, journal in (("memory", "false"), ("journal", "true")):
            data = work / f"api-{name}"
            shutil.copytree(index, data / "indexes")
            url = f"sqlite:///{data / 'ospo.db'}"
            upgrade(url)
            env = {"OSPO_DATA_DIR": str(data), "OSPO_POLICY_BACKEND": "none",
                   "OSPO_ADMIN_API_KEY": "search-log-bench-key-0123456789",
                   "OSPO_RATE_LIMIT_SEARCH": "", "OSPO_RATE_LIMIT_EVENTS": "",
                   "OSPO_SEARCH_LOG_JOURNAL": journal, "OSPO_LOG_LEVEL": "WARNING",
                   "OSPO_EXPLORE_SHARE": "0"}  # fmt: skip
            api = Api(env, data / "api.log")
            servers[name] = (api, api.url, url)
        for api, _, _ in servers.values():
            api.wait_ready()
        queries = ["usb c charging cable", "wireless earbuds", "desk lamp", "hdmi cable 2m",
                   "coffee mug", "office chair", "laptop stand", "bluetooth speaker"]  # fmt: skip
        ms: dict[str, list[float]] = {name: [] for name in servers}
        answered = dict.fromkeys(servers, 0)
        with httpx.Client(timeout=30) as http:
            for i in range(n + 20):  # the first 20 of each warm up
                for name, (_, base, _) in servers.items():
                    body = {"query": queries[i % len(queries)], "k": 10}
                    t = time.perf_counter()
                    r = http.post(f"{base}/v1/search", json=body)
                    elapsed = (time.perf_counter() - t) * 1000
                    assert r.status_code == 200, r.text
                    answered[name] += 1
                    if i >= 20:
                        ms[name].append(elapsed)
    finally:
        for proc, _, _ in servers.values():
            proc.stop(30)
    out: dict[str, Any] = {}
    for name, (_, _, url) in servers.items():
        with session_scope(url) as s:
            stored = s.scalar(select(func.count()).select_from(Search))
        out[name] = {
            **percentiles(ms[name], ndigits=4), "n": len(ms[name]),
            "answered": answered[name], "stored": stored,
        }  # fmt: skip
        log(f"HTTP {name}: p50 {out[name]['p50_ms']:.2f} ms, p99 {out[name]['p99_ms']:.2f} ms")
    out["p50_ratio_journal_vs_memory"] = round(
        out["journal"]["p50_ms"] / out["memory"]["p50_ms"], 3
    )
    out["p99_ratio_journal_vs_memory"] = round(
        out["journal"]["p99_ms"] / out["memory"]["p99_ms"], 3
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows per in-process variant")
    parser.add_argument("--searches", type=int, default=300, help="HTTP searches per API")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ospo-search-log-"))
    try:
        submit = submit_costs(work, args.rows)
        http = end_to_end(work, args.searches, index_root(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        **header(__file__, argv),
        "journal_line_bytes": journal_line_bytes(),
        "submit": submit,
        "http_concurrency_1": http,
        "goal": {
            "api_p50_within_10_percent": http["p50_ratio_journal_vs_memory"] <= 1.10,
            "every_answered_search_stored": all(
                http[k]["answered"] == http[k]["stored"] for k in ("memory", "journal")
            ),
        },
    }
    write_json(args.out, result, indent=1)
    log(f"wrote {args.out}: {result['goal']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
