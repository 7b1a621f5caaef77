"""Versioned FAISS indexes on disk and the batched retriever that serving and training share.

Layout under `<data_dir>/indexes/`:
    <version>/index.faiss      FAISS index (IndexIDMap2 over flat-IP or HNSW-IP), ids = row numbers
    <version>/ids.json         product id of each row
    <version>/titles.json      title of each row (results are rendered without a database trip)
    <version>/embeddings.npy   (N, dim) float32, for pooled rewards and exact re-ranking
    <version>/manifest.json    embedder, dimension, count, kind, checksum, version, created_at
    CURRENT                    name of the serving version, replaced atomically
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from service.retrieval.embedder import Embedder

IndexKind = Literal["flat", "hnsw"]


class IndexNotFoundError(FileNotFoundError):
    """No index has been built under this directory yet."""


@dataclass(frozen=True)
class Manifest:
    version: str
    embedder: str
    dim: int
    count: int
    kind: IndexKind
    checksum: str
    created_at: float
    hnsw_m: int | None = None


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float


def choose_kind(requested: str, count: int, threshold: int) -> IndexKind:
    if requested in ("flat", "hnsw"):
        return requested  # type: ignore[return-value]
    return "hnsw" if count > threshold else "flat"


def make_faiss_index(vectors: np.ndarray, kind: IndexKind, hnsw_m: int = 32) -> faiss.Index:
    n, dim = vectors.shape
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 200
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
    return index


def _checksum(ids: Sequence[str], vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()[:16]


def write_index(
    root: Path,
    ids: Sequence[str],
    titles: Sequence[str],
    vectors: np.ndarray,
    embedder_name: str,
    kind: IndexKind,
    hnsw_m: int = 32,
    activate: bool = True,
) -> Manifest:
    """Write a new index version next to the others; optionally make it the serving one."""
    if len(ids) != len(titles) or len(ids) != vectors.shape[0]:
        raise ValueError("ids, titles and vectors must have the same length")
    checksum = _checksum(ids, vectors)
    version = time.strftime("%Y%m%dT%H%M%S") + f"-{checksum[:8]}"
    manifest = Manifest(
        version=version,
        embedder=embedder_name,
        dim=int(vectors.shape[1]),
        count=len(ids),
        kind=kind,
        checksum=checksum,
        created_at=time.time(),
        hnsw_m=hnsw_m if kind == "hnsw" else None,
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    faiss.write_index(make_faiss_index(vectors, kind, hnsw_m), str(tmp / "index.faiss"))
    (tmp / "ids.json").write_text(json.dumps(list(ids)))
    (tmp / "titles.json").write_text(json.dumps(list(titles)))
    np.save(tmp / "embeddings.npy", vectors)
    (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))
    final = root / version
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if activate:
        set_current(root, version)
    return manifest


def set_current(root: Path, version: str) -> None:
    if not (root / version / "manifest.json").exists():
        raise IndexNotFoundError(f"index version {version} not found under {root}")
    tmp = root / f".CURRENT-{os.getpid()}"
    tmp.write_text(version)
    tmp.replace(root / "CURRENT")


def current_version(root: Path) -> str | None:
    try:
        return (root / "CURRENT").read_text().strip() or None
    except FileNotFoundError:
        return None


class Retriever:
    """An index version in memory plus the embedder it was built with."""

    def __init__(self, path: Path, embedder: Embedder, ef_search: int = 128) -> None:
        self.path = path
        self.manifest = Manifest(**json.loads((path / "manifest.json").read_text()))
        if embedder.name != self.manifest.embedder or embedder.dim != self.manifest.dim:
            raise ValueError(
                f"index {self.manifest.version} was built with {self.manifest.embedder} "
                f"(dim {self.manifest.dim}), not {embedder.name} (dim {embedder.dim})"
            )
        self.embedder = embedder
        self.index = faiss.read_index(str(path / "index.faiss"))
        if self.manifest.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = ef_search
        self.ids: list[str] = json.loads((path / "ids.json").read_text())
        self.titles: list[str] = json.loads((path / "titles.json").read_text())
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self._embeddings: np.ndarray | None = None

    @classmethod
    def load_current(cls, root: Path, embedder: Embedder, ef_search: int = 128) -> Retriever:
        version = current_version(root)
        if version is None:
            raise IndexNotFoundError(f"no index under {root}; run `ospo index build`")
        return cls(root / version, embedder, ef_search)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def embeddings(self) -> np.ndarray:
        """(N, dim) product embeddings, memory-mapped on first use."""
        if self._embeddings is None:
            self._embeddings = np.load(self.path / "embeddings.npy", mmap_mode="r")
        return self._embeddings

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, dim) → scores (B, k), rows (B, k) with -1 where the index has fewer than k items."""
        k = max(1, min(k, max(self.manifest.count, 1)))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows

    def search_many(self, texts: Sequence[str], k: int) -> list[list[Hit]]:
        """One embedder call and one FAISS call for all texts."""
        if not texts:
            return []
        scores, rows = self.search_vectors(self.embedder.encode(texts), k)
        return [
            [
                Hit(self.ids[r], self.titles[r], float(s))
                for s, r in zip(srow, rrow, strict=True)
                if r >= 0
            ]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def search_ids_many(self, texts: Sequence[str], k: int) -> list[list[str]]:
        return [[h.product_id for h in hits] for hits in self.search_many(texts, k)]
