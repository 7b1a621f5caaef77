"""What one opened index version costs in bench/scale.py: memory of processes holding it as an
API process does (RSS, and what a second process adds or shares, from smaps_rollup), and the
latency and CPU time of the retrieval stage per variant (plain, brand filter, facets) at
concurrency 1 and 8. Its ``hold`` and ``probe`` run in child processes (``scale.py hold``,
``scale.py probe``), so every version is measured in a fresh process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness.timing import Stopwatch
from harness.timing import percentiles as summary

ROOT = Path(__file__).resolve().parents[1]
SCALE = Path(__file__).with_name("scale.py")
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"


def smaps(pid: int) -> dict[str, int]:
    """smaps_rollup of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) // 1024
    return out


def memory_summary(m: dict[str, int]) -> dict[str, int]:
    return {
        "rss_mib": m["Rss"],
        "pss_mib": m["Pss"],
        "private_mib": m["Private_Clean"] + m["Private_Dirty"],
        "shared_mib": m["Shared_Clean"] + m["Shared_Dirty"],
        "file_backed_mib": m["Rss"] - m.get("Anonymous", 0),
    }


def start_holder(root: Path, extra: list[str]) -> subprocess.Popen[str]:
    """A process that opens the version as an API process does, warms it, says `ready`."""
    return subprocess.Popen(
        [sys.executable, str(SCALE), "hold", "--root", str(root), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"holder failed: {line!r}")


def measure_memory(root: Path, extra: list[str]) -> dict[str, Any]:
    one = start_holder(root, extra)
    try:
        wait_ready(one)
        alone = memory_summary(smaps(one.pid))
        two = start_holder(root, extra)
        try:
            wait_ready(two)
            first, second = memory_summary(smaps(one.pid)), memory_summary(smaps(two.pid))
        finally:
            two.send_signal(signal.SIGTERM)
            two.wait(30)
    finally:
        one.send_signal(signal.SIGTERM)
        one.wait(30)
    return {
        "one_process": alone,
        "two_processes": {"first": first, "second": second},
        "second_process_adds_mib": second["private_mib"],
        "shared_between_them_mib": min(first["shared_mib"], second["shared_mib"]),
    }


def hold(root: Path, mmap_flat: bool) -> None:
    retriever = open_for_serving(root, mmap_flat)
    queries = chorus_queries()
    if root.name == "embedder-only":
        retriever.encode(queries)
    else:
        table = retriever.facets
        brand = top_brand(table)
        from service.retrieval.facets import Filters

        for start in range(0, len(queries), 16):  # touch what serving touches
            batch = queries[start : start + 16]
            retriever.rank(batch, 10, candidates=True)
            retriever.rank(batch, 10, filters=[Filters(brand=(brand,))] * len(batch))
    print("ready", flush=True)
    while True:  # until the parent's SIGTERM
        time.sleep(3600)


def open_for_serving(root: Path, mmap_flat: bool = False):  # type: ignore[no-untyped-def]
    if root.name == "embedder-only":
        from service.retrieval.embedder import get_embedder

        return get_embedder()
    import faiss

    from service.retrieval.open import open_retriever
    from service.settings import Settings

    read = faiss.read_index
    if mmap_flat:  # as the service reads it since this bench (service/retrieval/index.py)
        faiss.read_index = lambda path, flags=0: read(path, flags | faiss.IO_FLAG_MMAP_IFC)
    else:  # as it did before: the index copied into the process
        faiss.read_index = lambda path, flags=0: read(path, flags & ~faiss.IO_FLAG_MMAP_IFC)
    return open_retriever(Settings(data_dir=root.parent), root=root)


# ---------------------------------------------------------------- latency


def chorus_queries() -> list[str]:
    from service.catalog.formats import parse_chorus_labels

    return sorted({lab.query for lab in parse_chorus_labels(CHORUS)})


def top_brand(table) -> str:  # type: ignore[no-untyped-def]
    codes = table.codes["brand"]
    return table.values["brand"][int(np.bincount(codes[codes >= 0]).argmax())]


def percentiles(ms: list[float]) -> dict[str, float | None]:
    return {**summary(ms, ndigits=2), "n": len(ms)}


async def _latencies(retriever, queries: list[str], concurrency: int, variant: str):  # type: ignore[no-untyped-def]
    """(wall ms per search, CPU ms per search at concurrency 1, CPU ms of the process per
    search): CPU time is what a search costs whatever else the machine runs."""
    from service.retrieval.batcher import SearchBatcher
    from service.retrieval.facets import PRICE, Filters

    batcher = SearchBatcher(lambda: retriever)
    batcher.start()
    table = retriever.facets
    filters = Filters(brand=(top_brand(table),)) if variant == "brand_filter" else None
    facets = table.default_facets() if variant == "facets" else []
    work = list(queries)
    wall: list[float] = []
    cpu: list[float] = []

    async def client() -> None:
        while work:
            q = work.pop()
            with Stopwatch() as one:
                ranking, *_ = await batcher.search(q, 10, filters=filters, candidates=bool(facets))
                if facets:
                    rows = np.asarray(ranking.candidates, dtype=np.int64)
                    table.counts(rows, facets)
                    if PRICE in facets:
                        table.price_stats(rows)
            wall.append(one.wall_s * 1000)
            if concurrency == 1:
                cpu.append(one.cpu_s * 1000)

    with Stopwatch() as every:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    total = every.cpu_s * 1000 / len(queries)
    await batcher.stop()
    return wall, cpu, total


VARIANTS = ("plain", "brand_filter", "facets")


def _summarise(samples: dict[str, tuple[list[float], list[float], list[float]]]):  # type: ignore[no-untyped-def]
    out = {}
    for key, (wall, cpu, totals) in samples.items():
        out[key] = {
            **percentiles(wall),
            "cpu_ms_per_search": round(float(np.mean(totals)), 2),
            **({"cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2)} if cpu else {}),
        }
    return out


def _round(retriever, queries, samples) -> None:  # type: ignore[no-untyped-def]
    for variant in VARIANTS:
        for concurrency in (1, 8):
            key = f"{variant}@c{concurrency}"
            wall, cpu, total = asyncio.run(_latencies(retriever, queries, concurrency, variant))
            acc = samples.setdefault(key, ([], [], []))
            acc[0].extend(wall)
            acc[1].extend(cpu)
            acc[2].append(total)


def probe(root: Path, repeats: int) -> dict[str, Any]:
    """Latency of each variant × concurrency for one version."""
    from service.retrieval.facets import Filters

    retriever = open_for_serving(root, mmap_flat=True)
    queries = chorus_queries()
    retriever.rank(queries[:8], 10)  # one-off costs
    samples: dict = {}
    for _ in range(repeats):
        _round(retriever, queries, samples)
    mask = retriever.mask(Filters(brand=(top_brand(retriever.facets),)))
    return {
        "latency": _summarise(samples),
        "brand_filter_share": round(float(mask.mean()), 4) if mask is not None else None,
    }


def probe_all(roots: list[Path], repeats: int) -> dict[str, Any]:
    """The same measures for several versions in one process, rounds interleaved across them,
    so machine load falls on every size alike: the across-size ratios come from here."""
    retrievers = [open_for_serving(root, mmap_flat=True) for root in roots]
    queries = chorus_queries()
    for r in retrievers:
        r.rank(queries[:8], 10)
    samples: list[dict] = [{} for _ in roots]
    for _ in range(repeats):
        for retriever, acc in zip(retrievers, samples, strict=True):
            _round(retriever, queries, acc)
    return {
        str(r.manifest.count): _summarise(acc) for r, acc in zip(retrievers, samples, strict=True)
    }
