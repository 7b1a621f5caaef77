"""The single arms of bench/lexical.py: the three product texts (title, search_text, full),
the Chorus judgments, and one ranked run per configuration — dense (MiniLM, exact inner
product, embeddings cached under bench/results/tmp/lexical/), bm25s (with or without
stemming) and tantivy — each with its build time, query latency and index size."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness.timing import percentiles
from rich.console import Console

from service.catalog.formats import parse_chorus_labels
from service.normalize import normalize_query
from service.records import ProductRecord

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "chorus_icecat"
TMP = ROOT / "bench" / "results" / "tmp" / "lexical"
DEPTH = 100
FIELDS = ("title", "search_text", "full")
SKIP_ATTRS = {"price", "date_released", "ean", "img_500x500"}

console = Console(stderr=True)


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


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float | None]:
    return percentiles(samples_s, scale=1000)


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
