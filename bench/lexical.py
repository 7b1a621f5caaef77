"""Lexical vs dense vs hybrid retrieval benchmark → bench/results/lexical.json + lexical.png.

On the Chorus judgments (queries with at least one positive grade, gains as the parser gives
them: 3 → 1.0, 2 → 0.5, 1 → 0.1) over the whole Open Icecat catalogue (19,406 products) it
measures NDCG@10 (95% percentile-bootstrap CI over queries) and recall@100 of top-100 rankings:

- dense: MiniLM (the service's embedder, normalised, exact inner product) on three texts —
  ``title``; ``search_text`` (the service's text: title · brand · description, ≤ 512 chars);
  ``full`` (title · brand · untruncated description · "key: value" of every product attribute
  except price, release date, EAN and image URL; MiniLM itself truncates at 256 word pieces);
- bm25s (method "lucene", k1 = 1.5, b = 0.75, English stopwords) on the same three texts, with
  and without the Snowball English stemmer (PyStemmer);
- tantivy (BM25, k1 = 1.2, b = 0.75; its ``en_stem`` and ``default`` tokenizers, which keep
  stopwords, and ``en_stem`` + English stopwords) on the best bm25s text, to compare libraries:
  NDCG, index build time, p50/p99 latency of one query, on-disk size; plus the best bm25s
  configuration with tantivy's k1 = 1.2 (a diagnostic row, never selected);
- hybrids of the best dense text and the best bm25s configuration: reciprocal rank fusion
  Σ_arm w_arm / (k + rank), dense weight 1, grid k ∈ {10, 30, 60, 100} × lexical weight ∈
  {0.5, 1, 1.5, 2}; score fusion (per query min-max of each arm's top-100 scores, missing = 0,
  lexical weight ∈ {0.5, 1, 2}); RRF (k = 60, equal weights) of every dense text × every
  bm25s text (each with its better stemming choice), and of the best dense text × each tantivy
  run.

Every configuration also gets paired differences (bootstrap of the per-query differences) against
"dense search_text" and "bm25s search_text" (no stemming). Since the grid is tuned on the same
~100 queries, ``two_fold`` reports honest numbers for each selection (the hybrid grid, the single
arms' text/stemming choice): choose on one half of the queries (split by a hash of the query),
score on the other half, and vice versa; the out-of-fold per-query values of both halves are
pooled into one mean with a CI. The primary split is repeated with ``--splits`` salted hashes.

Run (the first run embeds 3 × 19,406 texts: ~35 min on one busy core, mostly the long ``full``
texts; the matrices are cached under bench/results/tmp/lexical/, so re-runs take about a minute):
    .venv/bin/pip install pystemmer tantivy      # optional extras: stemming and tantivy rows
    .venv/bin/python bench/lexical.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from tqdm import tqdm

from service.catalog.formats import parse_chorus_labels, parse_icecat_products
from service.normalize import normalize_query
from service.records import ProductRecord
from service.retrieval.metrics import bootstrap_ci, ndcg_at_k, recall_at_k

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "chorus_icecat"
OUT = ROOT / "bench" / "results"
TMP = OUT / "tmp" / "lexical"
DEPTH = 100
FIELDS = ("title", "search_text", "full")
REF_DENSE = "dense search_text"
REF_LEX = "bm25s search_text"
RRF_KS = (10, 30, 60, 100)
RRF_LEX_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
SCORE_LEX_WEIGHTS = (0.5, 1.0, 2.0)
SKIP_ATTRS = {"price", "date_released", "ean", "img_500x500"}

console = Console(stderr=True)


# ---------------------------------------------------------------- data


def attribute_text(key: str, value: Any) -> str:
    """One attribute as "key: value" (``attr_t_print_technology`` → ``print technology``)."""
    name = "model" if key == "name" else " ".join(re.sub(r"^attr_[a-z]_", "", key).split("_"))
    if isinstance(value, bool):
        val = "yes" if value else "no"
    elif isinstance(value, float):
        val = f"{value:g}"
    elif isinstance(value, list):
        val = ", ".join(str(v) for v in value)
    else:
        val = str(value)
    return f"{name}: {val}"


def full_text(p: ProductRecord) -> str:
    """Title, brand (unless already in the title), whole description, then all attributes."""
    parts = [p.title]
    if p.brand and p.brand.lower() not in p.title.lower():
        parts.append(p.brand)
    if p.description:
        parts.append(p.description)
    parts += [attribute_text(k, v) for k, v in p.attributes.items() if k not in SKIP_ATTRS]
    return ". ".join(x.strip() for x in parts if x and x.strip())


def field_texts(products: Sequence[ProductRecord]) -> dict[str, list[str]]:
    return {
        "title": [p.title for p in products],
        "search_text": [p.search_text for p in products],
        "full": [full_text(p) for p in products],
    }


def load_judgments() -> dict[str, dict[str, float]]:
    """{normalised query: {product id: gain}}, only queries with at least one positive gain."""
    targets: dict[str, dict[str, float]] = defaultdict(dict)
    for lab in parse_chorus_labels(DATA / "Broad_Query_Set_rated.csv"):
        targets[normalize_query(lab.query)][lab.product_id] = lab.gain
    return {q: t for q, t in sorted(targets.items()) if any(g > 0 for g in t.values())}


def fold_of(query: str, salt: str = "") -> int:
    return int(hashlib.sha1(f"{salt}{query}".encode()).hexdigest(), 16) % 2


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    """Top-``DEPTH`` product ids and their scores, one list per query (queries in fixed order)."""

    ids: list[list[str]]
    scores: list[np.ndarray]


def top_k(scores: np.ndarray, ids: Sequence[str], k: int = DEPTH, positive_only: bool = False):
    """Best ``k`` (ids, scores) of one score vector, ties broken by catalogue order."""
    k = min(k, scores.size)
    cand = np.argpartition(-scores, k - 1)[:k]
    cand = cand[np.lexsort((cand, -scores[cand]))]
    if positive_only:
        cand = cand[scores[cand] > 0]
    return [ids[i] for i in cand], scores[cand].astype(np.float64)


def run_from_matrix(score_rows: Sequence[np.ndarray], ids: Sequence[str], positive_only: bool):
    tops = [top_k(s, ids, DEPTH, positive_only) for s in score_rows]
    return Run([t[0] for t in tops], [t[1] for t in tops])


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ---------------------------------------------------------------- dense


def dense_embeddings(field: str, texts: list[str], emb) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Embeddings of ``texts``, cached in bench/results/tmp/ under a hash of model and texts."""
    digest = hashlib.sha1("\x1e".join([emb.name, *texts]).encode()).hexdigest()[:12]
    path = TMP / f"dense_{field}_{digest}.npy"
    if path.exists():
        console.log(f"dense {field}: cached embeddings {path.name}")
        return np.load(path)
    console.log(f"dense {field}: embedding {len(texts):,} texts (cached afterwards)")
    t = time.perf_counter()
    mat = emb.encode(texts, progress=True)
    console.log(f"dense {field}: {time.perf_counter() - t:.0f} s")
    TMP.mkdir(parents=True, exist_ok=True)
    np.save(path, mat)
    return mat


def dense_runs(texts: dict[str, list[str]], ids: list[str], queries: list[str], args) -> dict:  # type: ignore[no-untyped-def]
    from service.retrieval.embedder import get_embedder

    emb = get_embedder()
    qvec = emb.encode(queries)
    runs = {}
    for field in FIELDS:
        mat = dense_embeddings(field, texts[field], emb)
        runs[f"dense {field}"] = run_from_matrix(qvec @ mat.T, ids, positive_only=False)
    # latency of one query: encode, then exact inner product + top-k over the catalogue
    enc, search = [], []
    mat = dense_embeddings("search_text", texts["search_text"], emb)
    for _ in range(args.latency_reps):
        for q in queries:
            t = time.perf_counter()
            v = emb.encode([q])
            t1 = time.perf_counter()
            top_k((v @ mat.T)[0], ids)
            t2 = time.perf_counter()
            enc.append(t1 - t)
            search.append(t2 - t1)
    info = {
        "model": emb.name,
        "query_encode": percentiles_ms(enc),
        "search_numpy_exact": percentiles_ms(search),
        "index_mb": mat.nbytes / 2**20,
    }
    return runs, info


# ---------------------------------------------------------------- lexical


def stemmer_or_none(stem: bool):  # type: ignore[no-untyped-def]
    if not stem:
        return None
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25s_run(  # type: ignore[no-untyped-def]
    field: str, docs: list[str], ids: list[str], queries: list[str], stem: bool, args, k1=1.5
):
    """Rank with bm25s (lucene, b 0.75, English stopwords); also time and size the index.

    Query latency is tokenisation + ``retrieve`` (numpy backend, the library's default)."""
    import bm25s

    stemmer = stemmer_or_none(stem)

    def tok(texts: list[str]):  # type: ignore[no-untyped-def]
        return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)

    t = time.perf_counter()
    model = bm25s.BM25(method="lucene", k1=k1)
    model.index(tok(docs), show_progress=False)
    build_s = time.perf_counter() - t

    n = len(ids)
    rows = []
    for q_tokens in bm25s.tokenize(
        queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    ):
        known = [w for w in q_tokens if w in model.vocab_dict]
        rows.append(model.get_scores(known) if known else np.zeros(n, dtype=np.float32))
    run = run_from_matrix(rows, ids, positive_only=True)

    lat, lat_retrieve = [], []
    for _ in range(args.latency_reps):
        for q in queries:
            t = time.perf_counter()
            q_tok = tok([q])
            t1 = time.perf_counter()
            model.retrieve(q_tok, k=DEPTH, show_progress=False, n_threads=0)
            lat.append(time.perf_counter() - t)
            lat_retrieve.append(time.perf_counter() - t1)
    save_dir = TMP / f"bm25s_{field}_{'stem' if stem else 'nostem'}_k{k1:g}"
    shutil.rmtree(save_dir, ignore_errors=True)
    model.save(str(save_dir), show_progress=False)
    info = {
        "build_s": build_s,
        "query": percentiles_ms(lat),
        "query_retrieve_only": percentiles_ms(lat_retrieve),
        "disk_mb": dir_size_mb(save_dir),
        "vocab": len(model.vocab_dict),
    }
    return run, info


_QUERY_SYNTAX = re.compile(r"[^\w\s]")


def tantivy_run(docs: list[str], ids: list[str], queries: list[str], tokenizer: str, args):  # type: ignore[no-untyped-def]
    """Rank with tantivy's BM25 (query parser over one field, OR of the terms).

    ``tokenizer``: a built-in one (``en_stem``, ``default``) or ``en_stem_stop`` (``en_stem``
    plus tantivy's English stopword list, to match bm25s' preprocessing)."""
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("pid", stored=True, tokenizer_name="raw")
    sb.add_text_field("body", stored=False, tokenizer_name=tokenizer)
    schema = sb.build()
    path = TMP / f"tantivy_{tokenizer}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t = time.perf_counter()
    index = tantivy.Index(schema, path=str(path))
    if tokenizer == "en_stem_stop":
        f = tantivy.Filter
        analyzer = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        for filt in (f.remove_long(40), f.lowercase(), f.stopword("english"), f.stemmer("english")):
            analyzer = analyzer.filter(filt)
        index.register_tokenizer(tokenizer, analyzer.build())
    writer = index.writer(num_threads=1)  # one segment in insertion order: ties reproducible
    for pid, text in zip(ids, docs, strict=True):
        writer.add_document(tantivy.Document(pid=pid, body=text))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    build_s = time.perf_counter() - t
    searcher = index.searcher()

    def search(q: str, fetch_ids: bool):  # type: ignore[no-untyped-def]
        text = _QUERY_SYNTAX.sub(" ", q).strip()
        if not text:
            return [], []
        query = index.parse_query(text, ["body"])
        hits = searcher.search(query, DEPTH, count=False).hits
        if not fetch_ids:
            return [], []
        return [searcher.doc(a)["pid"][0] for _, a in hits], [s for s, _ in hits]

    results = [search(q, True) for q in queries]
    run = Run([r[0] for r in results], [np.asarray(r[1], dtype=np.float64) for r in results])
    lat, lat_ids = [], []
    for _ in range(args.latency_reps):
        for q in queries:
            t = time.perf_counter()
            search(q, False)
            t1 = time.perf_counter()
            search(q, True)
            lat.append(t1 - t)
            lat_ids.append(time.perf_counter() - t1)
    info = {
        "build_s": build_s,
        "query": percentiles_ms(lat),
        "query_with_id_fetch": percentiles_ms(lat_ids),
        "disk_mb": dir_size_mb(path),
    }
    return run, info


# ---------------------------------------------------------------- fusion


def rrf(arms: Sequence[tuple[Run, float]], k: float) -> Run:
    """Σ_arm w / (k + rank), rank 1-based over each arm's top-``DEPTH``."""
    n_q = len(arms[0][0].ids)
    ids, scores = [], []
    for qi in range(n_q):
        acc: dict[str, float] = defaultdict(float)
        for run, w in arms:
            for rank, pid in enumerate(run.ids[qi][:DEPTH], 1):
                acc[pid] += w / (k + rank)
        best = sorted(acc.items(), key=lambda x: (-x[1], x[0]))[:DEPTH]
        ids.append([p for p, _ in best])
        scores.append(np.asarray([s for _, s in best]))
    return Run(ids, scores)


def score_fusion(arms: Sequence[tuple[Run, float]]) -> Run:
    """Σ_arm w · minmax(score) over each arm's top-``DEPTH`` (missing = 0, constant arm = 1)."""
    n_q = len(arms[0][0].ids)
    ids, scores = [], []
    for qi in range(n_q):
        acc: dict[str, float] = defaultdict(float)
        for run, w in arms:
            s = run.scores[qi][:DEPTH]
            if s.size == 0:
                continue
            lo, hi = float(s.min()), float(s.max())
            norm = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
            for pid, v in zip(run.ids[qi][:DEPTH], norm, strict=True):
                acc[pid] += w * float(v)
        best = sorted(acc.items(), key=lambda x: (-x[1], x[0]))[:DEPTH]
        ids.append([p for p, _ in best])
        scores.append(np.asarray([s for _, s in best]))
    return Run(ids, scores)


# ---------------------------------------------------------------- evaluation


def ci_dict(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def two_fold(
    candidates: dict[str, np.ndarray], queries: list[str], salt: str = ""
) -> dict[str, Any]:
    """Choose the best candidate on one half of the queries, score it on the other, and back."""
    folds = np.asarray([fold_of(q, salt) for q in queries])
    out_of_fold = np.zeros(len(queries))
    halves = []
    for held in (0, 1):
        train, test = folds != held, folds == held
        chosen = max(candidates, key=lambda c: (candidates[c][train].mean(), c))
        out_of_fold[test] = candidates[chosen][test]
        halves.append(
            {
                "choose_on_queries": int(train.sum()),
                "chosen": chosen,
                "ndcg@10_on_choice_half": round(float(candidates[chosen][train].mean()), 4),
                "ndcg@10_on_held_out_half": round(float(candidates[chosen][test].mean()), 4),
            }
        )
    return {"halves": halves, "out_of_fold": out_of_fold}


def selection_report(
    candidates: dict[str, np.ndarray],
    queries: list[str],
    refs: dict[str, np.ndarray],
    splits: int,
) -> dict[str, Any]:
    """In-sample best, the primary 2-fold split and ``splits`` salted repeats of it."""
    best = max(candidates, key=lambda c: (candidates[c].mean(), c))
    primary = two_fold(candidates, queries)
    oof = primary["out_of_fold"]
    repeats = [two_fold(candidates, queries, salt=f"s{i}") for i in range(splits)]
    chosen_counts: dict[str, int] = defaultdict(int)
    for r in [primary, *repeats]:
        for h in r["halves"]:
            chosen_counts[h["chosen"]] += 1
    return {
        "candidates": len(candidates),
        "in_sample_best": best,
        "in_sample_best_ndcg@10": round(float(candidates[best].mean()), 4),
        "two_fold": {
            "halves": primary["halves"],
            "out_of_fold_ndcg@10": ci_dict(oof),
            **{f"out_of_fold_minus_{n}": ci_dict(oof - v) for n, v in refs.items()},
        },
        "repeated_two_fold": {
            "splits": splits,
            "mean_out_of_fold_ndcg@10": round(
                float(np.mean([r["out_of_fold"].mean() for r in repeats])), 4
            )
            if repeats
            else None,
            "min_max": [
                round(float(min(r["out_of_fold"].mean() for r in repeats)), 4),
                round(float(max(r["out_of_fold"].mean() for r in repeats)), 4),
            ]
            if repeats
            else None,
            "times_chosen": dict(sorted(chosen_counts.items(), key=lambda x: -x[1])),
        },
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = result["configs"]
    best_rrf = result["hybrid"]["rrf_grid_selection"]["in_sample_best"]
    shown = [
        n
        for n, c in configs.items()
        if c["kind"]
        in {
            "dense",
            "bm25s",
            "bm25s_variant",
            "tantivy",
            "score_fusion",
            "rrf_cross_field",
            "rrf_tantivy",
        }
        or n == best_rrf
    ]
    rows = [(n, configs[n]["ndcg@10"]["mean"], *configs[n]["ndcg@10"]["ci95"]) for n in shown]
    oof = result["hybrid"]["rrf_grid_selection"]["two_fold"]["out_of_fold_ndcg@10"]
    rows.append(("RRF grid, 2-fold (chosen on other half)", oof["mean"], *oof["ci95"]))
    colours = {
        "dense": "tab:blue",
        "bm25s": "tab:orange",
        "bm25s_variant": "tab:brown",
        "tantivy": "tab:red",
        "score_fusion": "tab:purple",
        "rrf_cross_field": "tab:green",
        "rrf_tantivy": "tab:pink",
        "rrf": "tab:olive",
    }
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    means = np.asarray([r[1] for r in rows])
    err = np.asarray([[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]])
    kinds = [configs[r[0]]["kind"] if r[0] in configs else "rrf" for r in rows]
    ax.barh(y, means, xerr=err, color=[colours[k] for k in kinds], capsize=2, height=0.7)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("NDCG@10 (95% bootstrap CI)")
    ax.set_xlim(0.3, 0.85)
    ax.axvline(configs[REF_LEX]["ndcg@10"]["mean"], color="grey", lw=0.6, ls="--")
    ax.set_title(
        f"Chorus × Icecat, {result['dataset']['queries']} queries: dense, lexical, hybrid",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("bm25s", "PyStemmer", "tantivy", "numpy", "torch", "sentence-transformers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT / "lexical.json")
    ap.add_argument("--plot", type=Path, default=OUT / "lexical.png")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for embedding (0: all cores, or 1 when the 1-min load ≥ 1)",
    )
    ap.add_argument("--latency-reps", type=int, default=3, help="timed passes over the queries")
    ap.add_argument("--splits", type=int, default=20, help="salted repeats of the 2-fold split")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()
    import torch

    threads = args.threads or (1 if load_start[0] >= 1.0 else (os.cpu_count() or 1))
    torch.set_num_threads(threads)
    console.log(f"load average {load_start}, torch threads {threads}")

    products = [p for p, _ in parse_icecat_products(DATA / "icecat_products")]
    ids = [p.id for p in products]
    texts = field_texts(products)
    targets = load_judgments()
    queries = list(targets)
    console.log(f"{len(products):,} products, {len(queries)} queries with a positive grade")

    runs: dict[str, Run] = {}
    kinds: dict[str, str] = {}
    libraries: dict[str, Any] = {}

    # dense
    dense, libraries["dense"] = dense_runs(texts, ids, queries, args)
    for name, run in dense.items():
        runs[name], kinds[name] = run, "dense"

    # bm25s
    stems = (False, True) if available("Stemmer") else (False,)
    if len(stems) == 1:
        console.log("[yellow]PyStemmer missing: no stemmed rows (pip install pystemmer)")
    libraries["bm25s"] = {}
    for field in tqdm(FIELDS, desc="bm25s"):
        for stem in stems:
            name = f"bm25s {field}" + (" +stem" if stem else "")
            runs[name], info = bm25s_run(field, texts[field], ids, queries, stem, args)
            kinds[name] = "bm25s"
            libraries["bm25s"][name] = info

    def ndcgs(run: Run) -> np.ndarray:
        return np.asarray(
            [ndcg_at_k(r, targets[q], 10) for r, q in zip(run.ids, queries, strict=True)]
        )

    per_query = {n: ndcgs(r) for n, r in runs.items()}
    best_dense = max((n for n in runs if kinds[n] == "dense"), key=lambda n: per_query[n].mean())
    best_lex = max((n for n in runs if kinds[n] == "bm25s"), key=lambda n: per_query[n].mean())
    best_field = best_lex.split()[1]
    console.log(f"best dense: {best_dense}; best bm25s: {best_lex}")

    # tantivy on the best bm25s text
    if available("tantivy"):
        libraries["tantivy"] = {}
        for tokenizer in ("en_stem", "default", "en_stem_stop"):
            name = f"tantivy {best_field} {tokenizer}"
            runs[name], info = tantivy_run(texts[best_field], ids, queries, tokenizer, args)
            kinds[name] = "tantivy"
            libraries["tantivy"][name] = info
            per_query[name] = ndcgs(runs[name])
    else:
        console.log("[yellow]tantivy missing: no tantivy rows (pip install tantivy)")
    # bm25s with tantivy's k1, to separate library from parameter differences (not selectable)
    name = f"{best_lex} k1=1.2"
    runs[name], info = bm25s_run(
        best_field, texts[best_field], ids, queries, "+stem" in name, args, 1.2
    )
    kinds[name] = "bm25s_variant"
    libraries["bm25s"][name] = info
    per_query[name] = ndcgs(runs[name])

    # hybrids of the best dense and the best bm25s run
    short = {
        best_dense: best_dense.replace("dense ", "D:"),
        best_lex: best_lex.replace("bm25s ", "L:"),
    }
    pair = f"{short[best_dense]} + {short[best_lex]}"
    rrf_names = []
    for k in RRF_KS:
        for w in RRF_LEX_WEIGHTS:
            name = f"RRF {pair} k={k} wL={w:g}"
            runs[name] = rrf([(runs[best_dense], 1.0), (runs[best_lex], w)], k)
            kinds[name] = "rrf"
            rrf_names.append(name)
    score_names = []
    for w in SCORE_LEX_WEIGHTS:
        name = f"score {pair} wL={w:g}"
        runs[name] = score_fusion([(runs[best_dense], 1.0), (runs[best_lex], w)])
        kinds[name] = "score_fusion"
        score_names.append(name)
    # every dense text × every bm25s text (its better stemming choice), RRF k=60, equal weights
    cross_names = []
    for df in FIELDS:
        for lf in FIELDS:
            lex = max(
                (n for n in runs if kinds[n] == "bm25s" and n.split()[1] == lf),
                key=lambda n: per_query[n].mean(),
            )
            name = f"RRF D:{df} + L:{lex.removeprefix('bm25s ')} k=60"
            runs[name] = rrf([(runs[f"dense {df}"], 1.0), (runs[lex], 1.0)], 60)
            kinds[name] = "rrf_cross_field"
            cross_names.append(name)
    # the best dense text + each tantivy tokenizer, RRF k=60, equal weights
    for n in [n for n in runs if kinds[n] == "tantivy"]:
        name = f"RRF {short[best_dense]} + {n} k=60"
        runs[name] = rrf([(runs[best_dense], 1.0), (runs[n], 1.0)], 60)
        kinds[name] = "rrf_tantivy"
        cross_names.append(name)
    for n, r in runs.items():
        if n not in per_query:
            per_query[n] = ndcgs(r)

    refs = {"dense_search_text": per_query[REF_DENSE], "bm25s_search_text": per_query[REF_LEX]}
    configs: dict[str, Any] = {}
    for n, r in runs.items():
        rec = [recall_at_k(ids_, targets[q], DEPTH) for ids_, q in zip(r.ids, queries, strict=True)]
        configs[n] = {
            "kind": kinds[n],
            "ndcg@10": ci_dict(per_query[n]),
            "recall@100": round(float(np.mean(rec)), 4),
            **{f"delta_vs_{rn}": ci_dict(per_query[n] - rv) for rn, rv in refs.items()},
        }

    def pick(names: list[str]) -> dict[str, np.ndarray]:
        return {n: per_query[n] for n in names}

    singles = {
        kind: [n for n in runs if kinds[n] == kind] for kind in ("dense", "bm25s", "tantivy")
    }
    sel_refs = {
        **refs,
        "best_bm25s": per_query[best_lex],
        "rrf_k60_wL1": per_query[f"RRF {pair} k=60 wL=1"],
    }
    hybrid = {
        "dense_arm": best_dense,
        "lexical_arm": best_lex,
        "rrf_grid": {
            f"k={k}": {
                f"wL={w:g}": configs[f"RRF {pair} k={k} wL={w:g}"]["ndcg@10"]["mean"]
                for w in RRF_LEX_WEIGHTS
            }
            for k in RRF_KS
        },
        "rrf_grid_selection": selection_report(pick(rrf_names), queries, sel_refs, args.splits),
        "rrf_and_score_fusion_selection": selection_report(
            pick(rrf_names + score_names), queries, sel_refs, args.splits
        ),
        "all_hybrids_selection": selection_report(
            pick(rrf_names + score_names + cross_names), queries, sel_refs, args.splits
        ),
    }
    arm_selection = {
        f"{kind}_text_and_stemming": selection_report(pick(names), queries, refs, args.splits)
        for kind, names in singles.items()
        if kind != "tantivy"
    }
    # paired per-query differences behind the recommendations: a − b, only pairs that exist
    rrf_default = f"RRF {pair} k=60 wL=1"
    comparisons = [
        *((f"bm25s {f} +stem", f"bm25s {f}") for f in FIELDS),
        ("dense full", "dense search_text"),
        ("bm25s full +stem", "bm25s search_text +stem"),
        *((n, best_lex) for n in runs if kinds[n] in {"tantivy", "bm25s_variant"}),
        (hybrid["rrf_grid_selection"]["in_sample_best"], rrf_default),
        *((n, rrf_default) for n in score_names),
        *((n, rrf_default) for n in cross_names if n != f"RRF {pair} k=60"),
        *((n, best_lex) for n in (rrf_default, hybrid["rrf_grid_selection"]["in_sample_best"])),
        *((n, best_lex) for n in score_names),
    ]
    paired = {
        f"{a}  −  {b}": ci_dict(per_query[a] - per_query[b])
        for a, b in comparisons
        if a in per_query and b in per_query and a != b
    }

    result = {
        "what": __doc__.split("\n\n")[0],
        "dataset": {
            "judgments": "Chorus Broad_Query_Set_rated.csv, gains 3→1.0, 2→0.5, 1→0.1, 0→0",
            "catalogue": "Open Icecat (data/chorus_icecat/icecat_products)",
            "products": len(products),
            "queries": len(queries),
            "judged_pairs": sum(len(t) for t in targets.values()),
            "depth": DEPTH,
            "mean_chars": {f: round(float(np.mean([len(t) for t in texts[f]])), 1) for f in FIELDS},
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "settings": {
            "bm25s": "method lucene, k1 1.5, b 0.75, stopwords 'en', stemmer Snowball english",
            "tantivy": "BM25 k1 1.2 b 0.75, one text field, query parser (OR of the terms)",
            "dense": "normalised MiniLM embeddings, exact inner product (numpy)",
            "rrf": "Σ w/(k + rank), rank 1-based in each arm's top-100, dense weight 1",
            "score_fusion": "per-query min-max of each arm's top-100 scores, missing 0",
            "two_fold": "choose on the queries of one sha1(query) % 2 half, score on the other",
        },
        "libraries": libraries,
        "selection": {"best_dense": best_dense, "best_bm25s": best_lex, **arm_selection},
        "hybrid": hybrid,
        "paired_differences": paired,
        "configs": configs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot(result, args.plot)
    console.log(f"wrote {args.out} and {args.plot}")
    summarize(result)


def summarize(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="NDCG@10")
    for col in ("config", "mean", "95% CI", "Δ dense st", "Δ bm25s st", "R@100"):
        table.add_column(col)
    for n, c in result["configs"].items():
        if (
            c["kind"] == "rrf"
            and "k=60 wL=1" not in n
            and n != (result["hybrid"]["rrf_grid_selection"]["in_sample_best"])
        ):
            continue
        table.add_row(
            n,
            f"{c['ndcg@10']['mean']:.3f}",
            "[{:.3f}, {:.3f}]".format(*c["ndcg@10"]["ci95"]),
            f"{c['delta_vs_dense_search_text']['mean']:+.3f}",
            f"{c['delta_vs_bm25s_search_text']['mean']:+.3f}",
            f"{c['recall@100']:.3f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
