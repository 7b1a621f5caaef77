"""The serving benchmark's stack (bench/serving.py): its workspace (a copy of the demo index,
a fresh database, two random LoRAs), the in-process compute floor, the environment of its API
processes and worker, and the admin calls that time a promotion from request to first stored
rewrite served."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from serving_load import ms_summary
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-serving-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROBE_INTERVAL_S = 0.05


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
        out[f"threads_{threads}_ms"] = ms_summary(times)
    torch.set_num_threads(default_threads)
    t = time.perf_counter()
    for i in range(0, len(queries), 32):
        retriever.search_many(queries[i : i + 32], args.k)
    out["batched_32_queries_per_s"] = round(len(queries) / (time.perf_counter() - t), 1)
    out["p50_ms"] = min(out[f"threads_{n}_ms"]["p50"] for n in sorted({1, default_threads}))
    return out


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
