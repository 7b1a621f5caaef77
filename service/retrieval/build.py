"""Build an index version from the products table (`ospo index build`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import Progress

from service.db.engine import session_scope
from service.repositories.products import iter_index_rows
from service.retrieval.embedder import Embedder
from service.retrieval.facets import FacetTable
from service.retrieval.index import (
    IndexNotFoundError,
    Manifest,
    Retriever,
    choose_kind,
    text_hash,
    write_index,
)

CHUNK = 2048


def embed_with_progress(embedder: Embedder, texts: list[str], label: str) -> np.ndarray:
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with Progress(transient=False) as progress:
        task = progress.add_task(label, total=len(texts))
        for start in range(0, len(texts), CHUNK):
            out[start : start + CHUNK] = embedder.encode(texts[start : start + CHUNK])
            progress.advance(task, min(CHUNK, len(texts) - start))
    return out


def reuse_vectors(
    index_root: Path, embedder: Embedder, hashes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, known mask): rows whose text the serving version already embedded.

    A rebuild after a catalogue upsert then embeds only new and changed products.
    """
    vectors = np.zeros((len(hashes), embedder.dim), dtype=np.float32)
    known = np.zeros(len(hashes), dtype=bool)
    try:
        current = Retriever.load_current(index_root, embedder)
    except (IndexNotFoundError, ValueError, OSError):
        return vectors, known
    old_hashes = current.text_hashes()
    if old_hashes is None:
        return vectors, known
    row_of = {h: i for i, h in enumerate(old_hashes)}
    pairs = [(i, row_of[h]) for i, h in enumerate(hashes) if h in row_of]
    if pairs:
        new_rows, old_rows = (np.asarray(x) for x in zip(*pairs, strict=True))
        vectors[new_rows] = current.embeddings[old_rows]
        known[new_rows] = True
    return vectors, known


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
        rows = list(iter_index_rows(session))
    if not rows:
        raise ValueError("the catalog is empty: ingest products before building an index")
    ids = [r[0] for r in rows]
    titles = [r[1] for r in rows]
    texts = [r[2] for r in rows]
    hashes = [text_hash(t) for t in texts]
    vectors, known = reuse_vectors(index_root, embedder, hashes)
    todo = np.flatnonzero(~known)
    if todo.size:
        vectors[todo] = embed_with_progress(
            embedder, [texts[i] for i in todo], f"embedding {todo.size} of {len(ids)} products"
        )
    return write_index(
        index_root,
        ids,
        titles,
        vectors,
        embedder.name,
        choose_kind(kind, len(ids), hnsw_threshold),
        hnsw_m,
        activate,
        lexical_texts=texts,
        text_hashes=hashes,
        facets=FacetTable.build([r[3] for r in rows], [r[4] for r in rows]),
    )
