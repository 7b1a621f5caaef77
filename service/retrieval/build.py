"""Build an index version from the products table (`ospo index build`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import Progress

from service.db.engine import session_scope
from service.repositories.products import iter_search_texts
from service.retrieval.embedder import Embedder
from service.retrieval.index import Manifest, choose_kind, write_index

CHUNK = 2048


def embed_with_progress(embedder: Embedder, texts: list[str], label: str) -> np.ndarray:
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with Progress(transient=False) as progress:
        task = progress.add_task(label, total=len(texts))
        for start in range(0, len(texts), CHUNK):
            out[start : start + CHUNK] = embedder.encode(texts[start : start + CHUNK])
            progress.advance(task, min(CHUNK, len(texts) - start))
    return out


def build_index_from_db(
    database_url: str,
    index_root: Path,
    embedder: Embedder,
    kind: str = "auto",
    hnsw_threshold: int = 200_000,
    hnsw_m: int = 32,
    activate: bool = True,
) -> Manifest:
    with session_scope(database_url) as session:
        rows = list(iter_search_texts(session))
    if not rows:
        raise ValueError("the catalog is empty: ingest products before building an index")
    ids = [r[0] for r in rows]
    titles = [r[1] for r in rows]
    vectors = embed_with_progress(embedder, [r[2] for r in rows], f"embedding {len(ids)} products")
    return write_index(
        index_root,
        ids,
        titles,
        vectors,
        embedder.name,
        choose_kind(kind, len(ids), hnsw_threshold),
        hnsw_m,
        activate,
    )
