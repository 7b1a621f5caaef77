"""Retrieval benchmark → bench/results/retrieval.json (+ retrieval.png).

Measures, in one process on this machine:
- embedding throughput of the default embedder (products/s) on real catalogue text;
- search latency p50/p99 for batches of 1 and 64 queries, on the demo catalogue (Icecat + ESCI
  sample, real embeddings) and on a generated 100k catalogue (real embeddings + Gaussian jitter,
  re-normalised: the latency of FAISS depends on the vectors' count and dimension, not their text);
- flat vs HNSW: recall@10 of HNSW against exact search, and the speed ratio;
- raw-query NDCG@10 (the baselines every rewrite is measured against): the Chorus judgments over
  the whole 19,406-product Icecat catalogue, and the ESCI sample over its own 392 products.

Run: `.venv/bin/python bench/retrieval.py` (uses the serving index under OSPO_DATA_DIR when it
holds the demo catalogue, otherwise embeds the shipped data itself).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import faiss
import numpy as np
from harness.results import RESULTS, machine, pyplot, save_figure, write_json
from harness.timing import percentiles

from service.catalog.formats import parse_chorus_labels, parse_esci_products, parse_icecat_products
from service.normalize import normalize_query
from service.retrieval.embedder import get_embedder
from service.retrieval.index import Retriever, current_version, make_faiss_index
from service.retrieval.metrics import bootstrap_ci, ndcg_at_k, recall_at_k
from service.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
OUT = RESULTS


def latency_ms(samples_s: list[float]) -> dict[str, float | None]:
    return percentiles(samples_s, scale=1000, mean=True)


def time_search(index: faiss.Index, queries: np.ndarray, batch: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(reps):
        rows = rng.integers(0, len(queries), size=batch)
        t = time.perf_counter()
        index.search(queries[rows], 10)
        samples.append(time.perf_counter() - t)
    return {"batch": batch, **latency_ms(samples)}


def time_end_to_end(retriever: Retriever, texts: list[str], batch: int, reps: int) -> dict:
    samples = []
    for i in range(reps):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        t = time.perf_counter()
        retriever.search_many(chunk, 10)
        samples.append(time.perf_counter() - t)
    return {"batch": batch, **latency_ms(samples)}


def load_catalogue(emb) -> tuple[list[str], list[str], np.ndarray, str]:
    """(ids, search texts, embeddings) of Icecat + ESCI sample: from the serving index if it has
    them, else embedded here."""
    icecat = [p for p, _ in parse_icecat_products(DATA / "chorus_icecat" / "icecat_products")]
    esci = [p for p, _ in parse_esci_products(DATA / "esci" / "sample_2c_full_data.csv") if p]
    products = icecat + esci
    settings = get_settings()
    if current_version(settings.index_dir):
        r = Retriever.load_current(settings.index_dir, emb)
        if all(p.id in r.row_of for p in products):
            rows = [r.row_of[p.id] for p in products]
            return (
                [p.id for p in products],
                [p.search_text for p in products],
                np.asarray(r.embeddings[rows]),
                f"serving index {r.version}",
            )
    texts = [p.search_text for p in products]
    return [p.id for p in products], texts, emb.encode(texts, progress=True), "embedded here"


def ndcg_eval(
    index: faiss.Index, ids: list[str], emb, targets: dict[str, dict[str, float]], k: int = 10
) -> dict:
    queries = sorted(targets)
    _, rows = index.search(emb.encode(queries), 100)
    ranked = [[ids[r] for r in row if r >= 0] for row in rows]
    nd = [ndcg_at_k(rk, targets[q], k) for rk, q in zip(ranked, queries, strict=True)]
    rec = [recall_at_k(rk, targets[q], 100) for rk, q in zip(ranked, queries, strict=True)]
    mean, lo, hi = bootstrap_ci(nd)
    return {
        "queries": len(queries),
        "ndcg@10": mean,
        "ndcg@10_ci95": [lo, hi],
        "recall@100": float(np.mean(rec)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=100_000, help="size of the generated catalogue")
    ap.add_argument("--reps", type=int, default=200, help="timed repetitions per measurement")
    ap.add_argument("--title-only", action="store_true", help="also score title-only embeddings")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    emb = get_embedder()
    result: dict = {
        "machine": machine(cpu_count=os.cpu_count(), faiss=faiss.__version__),
        "embedder": emb.name,
    }

    ids, texts, vecs, origin = load_catalogue(emb)
    result["catalogue"] = {"products": len(ids), "embeddings_from": origin}

    sample = texts[:2000]
    t = time.perf_counter()
    emb.encode(sample)
    result["embedding_throughput_products_per_s"] = len(sample) / (time.perf_counter() - t)
    titles = [s.split(". ")[0] for s in sample]
    t = time.perf_counter()
    emb.encode(titles)
    result["embedding_throughput_titles_per_s"] = len(titles) / (time.perf_counter() - t)

    # Baselines: Chorus over the 19,406 Icecat products only; ESCI over its own 392.
    icecat_n = 19_406
    chorus: dict[str, dict[str, float]] = defaultdict(dict)
    for lab in parse_chorus_labels(DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"):
        chorus[normalize_query(lab.query)][lab.product_id] = lab.gain
    esci_t: dict[str, dict[str, float]] = defaultdict(dict)
    for _, lab in parse_esci_products(DATA / "esci" / "sample_2c_full_data.csv"):
        if lab:
            esci_t[normalize_query(lab.query)][lab.product_id] = lab.gain
    result["raw_query_ndcg"] = {
        "chorus_over_icecat_19k": ndcg_eval(
            make_faiss_index(vecs[:icecat_n], "flat"), ids[:icecat_n], emb, chorus
        ),
        "esci_sample_392": ndcg_eval(
            make_faiss_index(vecs[icecat_n:], "flat"), ids[icecat_n:], emb, esci_t
        ),
    }
    if args.title_only:
        icecat_titles = [s.split(". ")[0] for s in texts[:icecat_n]]
        tv = emb.encode(icecat_titles, progress=True)
        result["raw_query_ndcg"]["chorus_over_icecat_19k_title_only"] = ndcg_eval(
            make_faiss_index(tv, "flat"), ids[:icecat_n], emb, chorus
        )

    # Latency on the demo catalogue and on a generated larger one.
    query_texts = sorted(chorus) + sorted(esci_t)
    qv = emb.encode(query_texts)
    rng = np.random.default_rng(0)
    base = vecs[rng.integers(0, len(vecs), size=args.scale)]
    big = base + 0.05 * rng.normal(size=base.shape).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    latency = {}
    for name, matrix in (("demo", vecs), (f"generated_{args.scale // 1000}k", big)):
        entry = {"products": len(matrix)}
        for kind in ("flat", "hnsw"):
            t = time.perf_counter()
            index = make_faiss_index(matrix, kind)
            entry[f"{kind}_build_s"] = time.perf_counter() - t
            entry[kind] = [time_search(index, qv, b, args.reps) for b in (1, 64)]
            if kind == "flat":
                _, exact = index.search(qv, 10)
            else:
                _, approx = index.search(qv, 10)
        entry["hnsw_recall@10_vs_flat"] = float(
            np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
        )
        entry["hnsw_speedup_batch1_p50"] = entry["flat"][0]["p50_ms"] / entry["hnsw"][0]["p50_ms"]
        latency[name] = entry
    result["faiss_latency"] = latency

    # End to end (embed + search) through the serving Retriever on the demo catalogue.
    settings = get_settings()
    if current_version(settings.index_dir):
        r = Retriever.load_current(settings.index_dir, emb)
        result["search_many_latency_demo"] = [
            time_end_to_end(r, query_texts, b, max(20, args.reps // 10)) for b in (1, 64)
        ]

    write_json(OUT / "retrieval.json", result)
    plot(result)
    print(json.dumps(result, indent=2))


def plot(result: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, values = [], []
    for cat, entry in result["faiss_latency"].items():
        for kind in ("flat", "hnsw"):
            for m in entry[kind]:
                labels.append(f"{cat}\n{kind} b={m['batch']}")
                values.append(m["p50_ms"])
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("FAISS search p50 (ms)")
    ax.set_yscale("log")
    ax.set_title("Search latency by catalogue, index kind and batch")
    fig.tight_layout()
    save_figure(fig, OUT / "retrieval.png", dpi=120)


if __name__ == "__main__":
    main()
