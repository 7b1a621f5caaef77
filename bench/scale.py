"""How cost grows with the catalogue → bench/results/scale.json + scale.png.

Synthetic catalogues recombined from the 19,406 Open Icecat products at 20k, 100k, 300k and 1M
products, each indexed as the service indexes (``write_index``: FAISS, BM25, facet columns) on
flat and HNSW, then opened by a fresh process as an API process opens it (``open_retriever``):

* build: seconds of the facet columns, of the rest of ``write_index`` (FAISS flat, BM25, files),
  and of the HNSW graph (built once more for the HNSW version, whose other files are the flat
  version's); the embedding time is N / 800 texts/s, MiniLM on this machine's 2 cores alone
  (DESIGN.md §3; the rate measured during the run, niced on a loaded machine, is kept beside it);
* memory: RSS of one API process holding the version (the embedder alone measured apart), then
  two such processes side by side: what the second adds (its private pages) and what the two
  share (file pages mapped by both: the BM25 matrices, embeddings.npy), from smaps_rollup; also
  the flat index read with ``faiss.IO_FLAG_MMAP_IFC`` (shared codes), measured as an option;
* disk: bytes per file of the version folder;
* latency of the retrieval stage (query embedding, both arms, fusion: `SearchBatcher`, as the
  API calls it) over the 116 Chorus queries, p50/p99 at concurrency 1 and 8 (8 clients in a
  loop), for a plain hybrid search, with a brand filter (the most common brand; its share of
  the rows is reported) and with facet counting (default facets and price stats over the
  candidates).

Synthetic products: product j < 19,406 is an Icecat product as is; above, base product a
(cycled) takes the brand of a donor b (also in its title), b's colour where both have one, its
price × U(0.8, 1.25) and a model code with a variant suffix. Embeddings are *recombined*, not
computed: normalise(0.8·e_a + 0.2·e_b) of the real MiniLM embeddings of a and b (embedding 1M
texts on this shared 2-core machine would take hours). ``recombination`` in the JSON checks that
this does not change search cost: cosine of recombined vs real embeddings of 500 synthetic
texts, and dense flat/HNSW time and HNSW recall on 19,406 recombined vs the 19,406 real vectors.

    nice -n 15 .venv/bin/python bench/scale.py run [--sizes 20000 100000 300000 1000000]
    .venv/bin/python bench/scale.py plot      # the PNG from the JSON
Results are written after every size, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from service.catalog.formats import parse_icecat_products  # noqa: E402
from service.records import ProductRecord  # noqa: E402

ICECAT = ROOT / "data" / "chorus_icecat" / "icecat_products"
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
OUT = ROOT / "bench" / "results"
TMP = OUT / "tmp" / "scale"
SIZES = (20_000, 100_000, 300_000, 1_000_000)
MIX = 0.8  # weight of the base product's embedding in a recombined one
COLOUR = "attr_t_product_colour"
EMBEDDER = "all-MiniLM-L6-v2"
REFERENCE_EMBED_RATE = 800.0  # MiniLM texts/s on this machine's 2 cores alone (DESIGN.md §3)


def icecat_products() -> list[ProductRecord]:
    return [p for p, _ in parse_icecat_products(ICECAT)]


# ---------------------------------------------------------------- real embeddings of Icecat


def demo_vectors(products: list[ProductRecord]) -> np.ndarray:
    """MiniLM embeddings of the demo catalogue's search texts: taken from a built demo index
    (var/indexes) when it holds every product, else embedded once and cached under TMP."""
    from service.retrieval.index import current_version

    ids = [p.id for p in products]
    cache = TMP / "icecat_vectors.npy"
    if cache.exists() and json.loads((TMP / "icecat_ids.json").read_text()) == ids:
        return np.load(cache)
    TMP.mkdir(parents=True, exist_ok=True)
    root = ROOT / "var" / "indexes"
    version = current_version(root) if root.exists() else None
    if version is not None:
        have = json.loads((root / version / "ids.json").read_text())
        row_of = {pid: i for i, pid in enumerate(have)}
        manifest = json.loads((root / version / "manifest.json").read_text())
        if manifest["embedder"] == EMBEDDER and all(pid in row_of for pid in ids):
            emb = np.load(root / version / "embeddings.npy", mmap_mode="r")
            vectors = np.asarray(emb[[row_of[pid] for pid in ids]], dtype=np.float32)
            np.save(cache, vectors)
            (TMP / "icecat_ids.json").write_text(json.dumps(ids))
            return vectors
    from service.retrieval.build import embed_with_progress
    from service.retrieval.embedder import get_embedder

    vectors = embed_with_progress(
        get_embedder(), [p.search_text for p in products], "embedding the demo catalogue"
    )
    np.save(cache, vectors)
    (TMP / "icecat_ids.json").write_text(json.dumps(ids))
    return vectors


# ---------------------------------------------------------------- synthetic catalogues


def _variant(j: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while j:
        j, r = divmod(j, 36)
        out = digits[r] + out
    return out or "0"


def synthesize(
    products: list[ProductRecord], vectors: np.ndarray, n: int, seed: int = 0
) -> tuple[list[ProductRecord], np.ndarray]:
    """``n`` products and their recombined embeddings (see module docstring)."""
    base = len(products)
    rng = np.random.default_rng(seed)
    donors = rng.integers(0, base, size=n)
    cycle = rng.permutation(base)
    factors = rng.uniform(0.8, 1.25, size=n)
    out: list[ProductRecord] = []
    for j in range(n):
        if j < base:
            out.append(products[j])
            continue
        a = products[cycle[j % base]]
        b = products[donors[j]]
        title = a.title
        if a.brand and b.brand and a.brand in title:
            title = title.replace(a.brand, b.brand)
        attrs = dict(a.attributes)
        if COLOUR in attrs and COLOUR in b.attributes:
            attrs[COLOUR] = b.attributes[COLOUR]
        if isinstance(attrs.get("price"), int | float):
            attrs["price"] = round(float(attrs["price"]) * factors[j], 2)
        model = str(attrs.get("name") or a.id)
        attrs["name"] = f"{model}-{_variant(j // base)}"
        out.append(
            ProductRecord(
                id=f"s{j}",
                title=f"{title} {attrs['name']}",
                source="synthetic",
                brand=b.brand or a.brand,
                description=a.description,
                attributes=attrs,
            )
        )
    idx_a = np.where(np.arange(n) < base, np.arange(n) % base, cycle[np.arange(n) % base])
    mixed = MIX * vectors[idx_a] + (1 - MIX) * vectors[donors]
    mixed[:base] = vectors[: min(base, n)]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return out, mixed.astype(np.float32)


# ---------------------------------------------------------------- memory


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
        [sys.executable, __file__, "hold", "--root", str(root), *extra],
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


def percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "n": len(ms),
    }


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
            t0, c0 = time.perf_counter(), time.process_time()
            ranking, *_ = await batcher.search(q, 10, filters=filters, candidates=bool(facets))
            if facets:
                rows = np.asarray(ranking.candidates, dtype=np.int64)
                table.counts(rows, facets)
                if PRICE in facets:
                    table.price_stats(rows)
            wall.append((time.perf_counter() - t0) * 1000)
            if concurrency == 1:
                cpu.append((time.process_time() - c0) * 1000)

    c_start = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    total = (time.process_time() - c_start) * 1000 / len(queries)
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


# ---------------------------------------------------------------- build


def disk(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in path.rglob("*"):
        if f.is_file():
            top = f.relative_to(path).parts[0]
            out[top] = out.get(top, 0) + f.stat().st_size
    out["total"] = sum(v for k, v in out.items())
    return out


def build_flat(n: int, work: Path) -> dict[str, Any]:
    """The flat version of the size-``n`` catalogue under ``work/flat`` (run in a child)."""
    from service.retrieval.facets import FacetTable
    from service.retrieval.index import write_index

    products = icecat_products()
    t0 = time.perf_counter()
    synth, mixed = synthesize(products, demo_vectors(products), n)
    t1 = time.perf_counter()
    facets = FacetTable.build([p.brand for p in synth], [p.attributes for p in synth])
    t2 = time.perf_counter()
    root = work / "flat" / "indexes"
    manifest = write_index(
        root,
        [p.id for p in synth],
        [p.title for p in synth],
        mixed,
        EMBEDDER,
        "flat",
        lexical_texts=[p.search_text for p in synth],
        facets=facets,
    )
    t3 = time.perf_counter()
    return {
        "products": n,
        "synthesize_s": round(t1 - t0, 1),
        "facets_s": round(t2 - t1, 1),
        "write_index_flat_s": round(t3 - t2, 1),
        "version": manifest.version,
        "disk_bytes_flat": disk(root / manifest.version),
    }


def build_hnsw(work: Path) -> dict[str, Any]:
    """The HNSW version beside the flat one: the flat version's files (hard links) with the
    graph, built from its embeddings.npy, in place of the flat index (run in a child)."""
    import faiss

    from service.retrieval.index import current_version, make_faiss_index

    flat = work / "flat" / "indexes"
    version = current_version(flat)
    assert version is not None
    vectors = np.load(flat / version / "embeddings.npy")
    t0 = time.perf_counter()
    graph = make_faiss_index(vectors, "hnsw", 32)
    seconds = time.perf_counter() - t0
    root = work / "hnsw" / "indexes"
    dst = root / version
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(flat / version, dst, copy_function=os.link)
    (dst / "index.faiss").unlink()
    faiss.write_index(graph, str(dst / "index.faiss"))
    meta = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").unlink()  # a hard link to the flat version's: replace, not edit
    (dst / "manifest.json").write_text(json.dumps({**meta, "kind": "hnsw", "hnsw_m": 32}))
    (root / "CURRENT").write_text(version)
    return {"hnsw_graph_s": round(seconds, 1), "disk_bytes_hnsw": disk(dst)}


def child(*args: str) -> dict[str, Any]:
    """Run ``scale.py *args`` in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def embed_throughput(products, vectors) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """MiniLM texts/s on 2,000 synthetic texts, and how close recombined vectors are to the real
    embeddings of their texts (500 of them)."""
    from service.retrieval.embedder import get_embedder

    synth, mixed = synthesize(products, vectors, len(products) + 2000, seed=1)
    texts = [p.search_text for p in synth[len(products) :]]
    emb = get_embedder()
    emb.encode(texts[:32])
    t0 = time.perf_counter()
    real = emb.encode(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    cos = np.sum(real[:500] * mixed[len(products) : len(products) + 500], axis=1)
    return {
        "texts_per_s": round(rate, 1),
        "recombined_vs_real_cosine": {
            "mean": round(float(cos.mean()), 4),
            "p10": round(float(np.percentile(cos, 10)), 4),
        },
    }


def search_cost_check(products, vectors) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Dense search cost on the real vectors vs as many recombined ones: HNSW distance
    computations per query (faiss' counter: independent of machine load), HNSW recall@10,
    the similarity of each query's nearest product, and times (best of 7 interleaved rounds;
    flat's cost is the same by construction, so its two times show the timing noise)."""
    import faiss

    from service.retrieval.embedder import get_embedder
    from service.retrieval.index import make_faiss_index

    n = len(products)
    _, mixed = synthesize(products, vectors, 2 * n, seed=2)
    arms = {"real": np.ascontiguousarray(vectors), "recombined": np.ascontiguousarray(mixed[n:])}
    queries = get_embedder().encode(chorus_queries())
    indexes = {}
    for name, vecs in arms.items():
        graph = make_faiss_index(vecs, "hnsw", 32)
        faiss.downcast_index(graph.index).hnsw.efSearch = 128
        indexes[name] = {"flat": make_faiss_index(vecs, "flat"), "hnsw": graph}
    times: dict[str, list[float]] = {}
    for _ in range(7):
        for name, pair in indexes.items():
            for kind, index in pair.items():
                t0 = time.perf_counter()
                for q in queries:
                    index.search(q[None, :], 100)
                times.setdefault(f"{name}/{kind}", []).append(
                    (time.perf_counter() - t0) / len(queries) * 1000
                )
    out: dict[str, Any] = {}
    for name, pair in indexes.items():
        top, exact = pair["flat"].search(queries, 10)
        faiss.cvar.hnsw_stats.reset()
        _, approx = pair["hnsw"].search(queries, 10)
        out[name] = {
            "flat_ms_per_query": round(min(times[f"{name}/flat"]), 3),
            "hnsw_ms_per_query": round(min(times[f"{name}/hnsw"]), 3),
            "hnsw_distances_per_query": round(faiss.cvar.hnsw_stats.ndis / len(queries), 1),
            "hnsw_recall_at_10": round(
                float(
                    np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
                ),
                4,
            ),
            "query_top1_similarity_mean": round(float(top[:, 0].mean()), 4),
        }
    return out


def recombination_check() -> None:
    """Re-measure the recombination check alone and store it in scale.json."""
    path = OUT / "scale.json"
    result = json.loads(path.read_text())
    products = icecat_products()
    result.setdefault("recombination", {})["search_cost"] = search_cost_check(
        products, demo_vectors(products)
    )
    save(result)


# ---------------------------------------------------------------- orchestration


def save(result: dict[str, Any]) -> None:
    (OUT / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


def run(sizes: list[int], repeats: int) -> None:
    """Phase 1: every size flat (cheap to build); phase 2: every size HNSW (the graph is the
    slow part), so a run cut short still has the whole flat curve."""
    import faiss

    path = OUT / "scale.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("sizes", {})
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "faiss": faiss.__version__,
        "note": "2 cores shared with other jobs; latencies are comparable within one run",
    }
    products = icecat_products()
    vectors = demo_vectors(products)
    if "recombination" not in result:
        result["recombination"] = {
            **embed_throughput(products, vectors),
            "search_cost": search_cost_check(products, vectors),
        }
        save(result)
    if "embedder_only_memory" not in result:
        only = TMP / "embedder-only"
        only.mkdir(parents=True, exist_ok=True)
        result["embedder_only_memory"] = measure_memory(only, [])
        save(result)
    rate = result["recombination"]["texts_per_s"]

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    for n in sizes:
        work = TMP / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        log(f"{n}: flat build")
        entry = child("build-flat", "--n", str(n), "--work", str(work))
        entry["embed_estimate_s"] = round(n / rate, 1)
        entry["build_total_flat_s"] = round(
            entry["facets_s"] + entry["write_index_flat_s"] + entry["embed_estimate_s"], 1
        )
        result["sizes"][str(n)] = entry
        save(result)
        measure(entry, "flat", work / "flat" / "indexes", repeats, log, latency=False)
        save(result)
    finish(list(SIZES), repeats)


def finish(sizes: list[int], repeats: int) -> None:
    """After the flat phase of ``run``: latency of every flat version interleaved in one
    process; then HNSW per size (graph, memory, latency) and the HNSW versions interleaved."""
    path = OUT / "scale.json"
    result = json.loads(path.read_text())

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def interleaved(kind: str) -> None:
        have = [n for n in sizes if (TMP / f"n{n}" / kind / "indexes" / "CURRENT").exists()]
        log(f"{kind}: interleaved latency of {have}")
        roots = [str(TMP / f"n{n}" / kind / "indexes") for n in have]
        got = child("probe-all", "--repeats", str(repeats), "--roots", *roots)
        for n in have:
            result["sizes"][str(n)][kind]["latency_interleaved"] = got[str(n)]
        save(result)

    interleaved("flat")
    for n in sizes:
        work = TMP / f"n{n}"
        entry = result["sizes"][str(n)]
        if "hnsw" in entry or not (work / "flat").exists():
            continue
        log(f"{n}: hnsw graph")
        entry.update(child("build-hnsw", "--work", str(work)))
        save(result)
        measure(entry, "hnsw", work / "hnsw" / "indexes", repeats, log, latency=False)
        save(result)
        if n >= 300_000:  # the graph takes longest from here: keep what finished
            interleaved("hnsw")
    plot(result)


def measure(
    entry: dict[str, Any], kind: str, root: Path, repeats: int, log, latency: bool = True
) -> None:  # type: ignore[no-untyped-def]
    log(f"{entry['products']} {kind}: memory")
    entry[kind] = {"memory": measure_memory(root, [])}
    try:  # faiss may refuse to map an index kind's codes
        entry[kind]["memory_mmap_codes"] = measure_memory(root, ["--mmap-flat"])
    except (RuntimeError, subprocess.SubprocessError) as e:
        entry[kind]["memory_mmap_codes"] = {"error": str(e)[:300]}
    if latency:
        log(f"{entry['products']} {kind}: latency")
        entry[kind].update(child("probe", "--root", str(root), "--repeats", str(repeats)))


def finalize(result: dict[str, Any]) -> None:
    """Build totals with embedding at the reference rate: the rate measured during a run on
    this shared machine (at nice 15, load ~10) says more about the other jobs than about
    MiniLM, so totals use MiniLM's rate on this machine's 2 cores alone (DESIGN.md §3)."""
    measured = result.get("recombination", {}).get("texts_per_s")
    result["embedding"] = {
        "reference_texts_per_s": REFERENCE_EMBED_RATE,
        "measured_here_texts_per_s": measured,
        "note": "totals use the reference rate; the measured one ran niced on a loaded machine",
    }
    for entry in result["sizes"].values():
        for kind in ("flat", "hnsw"):
            m = entry.get(kind, {})
            if "memory_mmap_codes" in m:  # measured as: a private copy, and mapped
                m["memory_read_private"] = m["memory"]
                m["memory"] = m.pop("memory_mmap_codes")
            if "latency" in m:  # a run of its own; the interleaved one is comparable
                m["latency_separate_run"] = m.pop("latency")
        n = entry["products"]
        entry["embed_estimate_s"] = round(n / REFERENCE_EMBED_RATE, 1)
        entry["build_total_flat_s"] = round(
            entry["facets_s"] + entry["write_index_flat_s"] + entry["embed_estimate_s"], 1
        )
        if "hnsw_graph_s" in entry:
            entry["build_total_hnsw_s"] = round(
                entry["build_total_flat_s"] + entry["hnsw_graph_s"], 1
            )


def plot(result: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = result or json.loads((OUT / "scale.json").read_text())
    finalize(result)
    save(result)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for kind, style in (("flat", "-"), ("hnsw", "--")):
        sizes = sorted(
            int(n) for n, e in result["sizes"].items() if "latency_interleaved" in e.get(kind, {})
        )
        for key, colour in (
            ("plain@c1", "C0"),
            ("plain@c8", "C1"),
            ("brand_filter@c1", "C2"),
            ("facets@c1", "C3"),
        ):
            ys = [
                result["sizes"][str(n)][kind]["latency_interleaved"][key]["p50_ms"] for n in sizes
            ]
            axes[0].plot(sizes, ys, style, color=colour, marker="o", label=f"{kind} {key}")
        mem = [result["sizes"][str(n)][kind] for n in sizes]
        rss = [m["memory"]["one_process"]["rss_mib"] for m in mem]
        add = [m["memory"]["second_process_adds_mib"] for m in mem]
        before = [m["memory_read_private"]["second_process_adds_mib"] for m in mem]
        axes[1].plot(sizes, rss, style, color="C0", marker="o", label=f"{kind}: one process RSS")
        axes[1].plot(sizes, add, style, color="C1", marker="o", label=f"{kind}: a second adds")
        axes[1].plot(
            sizes, before, style, color="C2", marker="o", label=f"{kind}: a second adds (copied)"
        )
    for kind, style in (("flat", "-"), ("hnsw", "--")):
        key = f"build_total_{kind}_s"
        sizes = sorted(int(n) for n, e in result["sizes"].items() if key in e)
        minutes = [result["sizes"][str(n)][key] / 60 for n in sizes]
        axes[2].plot(sizes, minutes, style, marker="o", label=f"{kind} (embedding estimated)")
    for ax, title, unit in (
        (axes[0], "retrieval p50", "ms"),
        (axes[1], "API process memory", "MiB"),
        (axes[2], "index build", "minutes"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("products")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "scale.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    r.add_argument("--repeats", type=int, default=2, help="rounds of the 116 queries")
    h = sub.add_parser("hold")
    h.add_argument("--root", type=Path, required=True)
    h.add_argument("--mmap-flat", action="store_true")
    sub.add_parser("plot")
    sub.add_parser("embed-demo")
    sub.add_parser("recombination")
    pa = sub.add_parser("probe-all")
    pa.add_argument("--roots", type=Path, nargs="+", required=True)
    pa.add_argument("--repeats", type=int, default=2)
    f = sub.add_parser("finish")
    f.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    f.add_argument("--repeats", type=int, default=2)
    b = sub.add_parser("build-flat")
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--work", type=Path, required=True)
    g = sub.add_parser("build-hnsw")
    g.add_argument("--work", type=Path, required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--root", type=Path, required=True)
    pr.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.sizes, args.repeats)
    elif args.cmd == "hold":
        hold(args.root, args.mmap_flat)
    elif args.cmd == "build-flat":
        print(json.dumps(build_flat(args.n, args.work)))
    elif args.cmd == "build-hnsw":
        print(json.dumps(build_hnsw(args.work)))
    elif args.cmd == "probe-all":
        print(json.dumps(probe_all(args.roots, args.repeats)))
    elif args.cmd == "finish":
        finish(args.sizes, args.repeats)
    elif args.cmd == "recombination":
        recombination_check()
    elif args.cmd == "probe":
        print(json.dumps(probe(args.root, args.repeats)))
    elif args.cmd == "embed-demo":
        demo_vectors(icecat_products())
    else:
        plot()


if __name__ == "__main__":
    main()
