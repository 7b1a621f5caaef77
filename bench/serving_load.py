"""The serving benchmark's client (bench/serving.py): the query pool, Zipf streams of it, and
a closed-loop load of concurrent searches summarised per concurrency level."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from harness.results import loadavg
from harness.timing import percentiles
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared" / "data"
REQUEST_TIMEOUT_S = 120.0


def query_pool(seed: int) -> list[str]:
    """Distinct (by normalised form) Chorus + ESCI sample + WANDS queries, shuffled."""
    import csv

    from service.catalog.formats import parse_chorus_labels, parse_esci_products
    from service.normalize import normalize_query

    texts = [
        lab.query
        for lab in parse_chorus_labels(DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv")
    ]
    esci = DATA / "esci" / "sample_2c_full_data.csv"
    texts += [lab.query for _, lab in parse_esci_products(esci) if lab is not None]
    wands = SHARED / "wands" / "query.csv"
    if wands.exists():
        with wands.open(newline="") as f:
            texts += [row["query"] for row in csv.DictReader(f, delimiter="\t")]
    seen: dict[str, str] = {}
    for text in texts:
        if text.strip():
            seen.setdefault(normalize_query(text), text.strip())
    pool = sorted(seen.values())
    random.Random(seed).shuffle(pool)
    return pool


def zipf_stream(pool: list[str], n: int, s: float, seed: int) -> list[str]:
    weights = 1.0 / np.arange(1, len(pool) + 1) ** s
    idx = np.random.default_rng(seed).choice(len(pool), size=n, p=weights / weights.sum())
    return [pool[i] for i in idx]


@dataclass
class Sample:
    latency_s: float
    status: int
    source: str | None = None
    adapter: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


async def search_once(client: httpx.AsyncClient, query: str, k: int) -> Sample:
    started = time.perf_counter()
    try:
        r = await client.post("/v1/search", json={"query": query, "k": k})
    except httpx.HTTPError:
        return Sample(time.perf_counter() - started, 0)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        return Sample(elapsed, r.status_code)
    body = r.json()
    return Sample(elapsed, 200, body["rewrite_source"], body["adapter"], body["timings"])


async def _run_level(base: str, queries: list[str], concurrency: int, k: int, bar: tqdm):
    samples: list[Sample | None] = [None] * len(queries)
    todo = iter(enumerate(queries))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i, query in todo:  # a shared iterator: each request is taken by exactly one worker
            samples[i] = await search_once(client, query, k)
            bar.update()

    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [s for s in samples if s is not None], wall


def run_level(
    base: str, queries: list[str], concurrency: int, k: int, desc: str
) -> tuple[list[Sample], float]:
    """The samples, in the order of `queries`, and the wall time of the whole level."""
    with tqdm(total=len(queries), desc=desc, unit="req", leave=False, dynamic_ncols=True) as bar:
        return asyncio.run(_run_level(base, queries, concurrency, k, bar))


def ms_summary(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    """p50, p95, p99, mean and max (2 decimals) of `values` × `scale`."""
    return percentiles(
        values, (50, 95, 99), scale=scale, ndigits=2, suffix="", mean=True, maximum=True
    )


def summarize(samples: list[Sample], wall_s: float, concurrency: int) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    server = {
        key: ms_summary([s.timings[key] for s in ok if key in s.timings])["p50"]
        for key in ("rewrite_ms", "retrieve_ms", "log_ms", "total_ms")
    }
    # Where the slowest 1% spent their time (server stages; the rest is HTTP and the client).
    slow = sorted(ok, key=lambda s: s.latency_s)[-max(1, len(ok) // 100) :]
    tail = {
        key: round(float(np.mean([s.timings.get(key, 0.0) for s in slow])), 2)
        for key in ("rewrite_ms", "dense_ms", "lexical_ms", "fusion_ms", "total_ms")
    }
    tail["client_ms"] = round(float(np.mean([s.latency_s * 1000 for s in slow])), 2)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "latency_ms": ms_summary([s.latency_s for s in ok], 1000.0),
        "rewrite_source": dict(Counter(s.source for s in ok)),
        "server_p50_ms": server,
        "slowest_1pct_mean_ms": tail,
        "loadavg_after": loadavg(),
    }


def measure(
    base: str, mode: str, streams: list[list[str]], levels: list[int], k: int
) -> list[dict]:
    """One summarized level per concurrency, each on its own stream."""
    out = []
    for stream, concurrency in zip(streams, levels, strict=True):
        before = loadavg()
        samples, wall = run_level(base, stream, concurrency, k, f"{mode} c={concurrency}")
        level = summarize(samples, wall, concurrency)
        level["loadavg_before"] = before
        n = max(1, level["ok"])
        level["hit_ratio"] = round(level["rewrite_source"].get("cache", 0) / n, 4)
        level["fallback_share"] = round(level["rewrite_source"].get("fallback", 0) / n, 4)
        out.append(level)
        lat = level["latency_ms"]
        tqdm.write(
            f"{mode:>16} c={concurrency:<3} p50={lat['p50']} p99={lat['p99']} ms"
            f"  {level['requests_per_s']} req/s  hit={level['hit_ratio']}"
            f"  sources={level['rewrite_source']}  errors={level['errors']}"
        )
    return out
