"""The synthetic catalogues of bench/scale.py: Open Icecat products recombined up to 1M, their
recombined embeddings (from the demo catalogue's real MiniLM ones), their flat and HNSW index
versions as the service writes them, and the checks that recombination leaves search cost
as it is (embedding rate, cosine to real embeddings, dense search cost and recall)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scale_probe import chorus_queries  # noqa: E402

from service.catalog.formats import parse_icecat_products  # noqa: E402
from service.records import ProductRecord  # noqa: E402

ICECAT = ROOT / "data" / "chorus_icecat" / "icecat_products"
TMP = ROOT / "bench" / "results" / "tmp" / "scale"
MIX = 0.8  # weight of the base product's embedding in a recombined one
COLOUR = "attr_t_product_colour"
EMBEDDER = "all-MiniLM-L6-v2"


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
