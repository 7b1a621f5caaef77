"""Versioned FAISS indexes on disk and the batched retriever that serving and training share.

Layout under `<data_dir>/indexes/`:
    <version>/index.faiss      FAISS index (IndexIDMap2 over flat-IP or HNSW-IP), ids = row numbers
    <version>/ids.json         product id of each row
    <version>/titles.json      title of each row (results are rendered without a database trip)
    <version>/embeddings.npy   (N, dim) float32, for pooled rewards and exact re-ranking
    <version>/text_hashes.json hash of each row's embedded text (a rebuild re-embeds only changes)
    <version>/lexical/         the BM25 index of the same rows (service/retrieval/lexical.py)
    <version>/facets/          brand, price and attribute columns for filters and facets
                               (service/retrieval/facets.py)
    <version>/manifest.json    embedder, dimension, count, kind, checksum, version, created_at
    CURRENT                    name of the serving version, replaced atomically

One version holds both arms: a version is written in full under a temporary name and renamed,
and CURRENT flips to it, so the dense and lexical arms are always from the same catalogue.
A search ranks with `mode` dense, lexical or hybrid (both arms fused, service/retrieval/fusion.py).
Filters restrict both arms to the admitted rows *before* ranking: the lexical arm scores every row
anyway and zeroes the others; the dense arm asks FAISS with an ID selector (exact for flat; for
HNSW the graph walk may starve under a tight filter, so whenever it returns fewer than it should
we rank the admitted rows exactly from the stored embeddings). A filter therefore never returns
fewer than k results when k admitted rows match.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from service.domain import RetrievalMode
from service.retrieval.embedder import Embedder
from service.retrieval.facets import FACETS_DIRNAME, FacetTable, Filters
from service.retrieval.fusion import Arm, FusionConfig, fuse
from service.retrieval.lexical import LEXICAL_DIRNAME, LexicalIndex

IndexKind = Literal["flat", "hnsw"]
# (B, dim) float32 queries, k → scores (B, k), rows (B, k): a FAISS index's ``search``
DenseSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class IndexNotFoundError(FileNotFoundError):
    """No index has been built under this directory yet."""


class ModeUnavailableError(ValueError):
    """The index version lacks the arm a retrieval mode needs."""


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
    lexical: bool = False  # the version carries a lexical arm (versions before it do not)
    facets: bool = False  # the version carries filter and facet columns


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


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def write_index(
    root: Path,
    ids: Sequence[str],
    titles: Sequence[str],
    vectors: np.ndarray,
    embedder_name: str,
    kind: IndexKind,
    hnsw_m: int = 32,
    activate: bool = True,
    *,
    lexical_texts: Sequence[str] | None = None,
    text_hashes: Sequence[str] | None = None,
    facets: FacetTable | None = None,
) -> Manifest:
    """Write a new index version (dense arm, and the lexical arm over ``lexical_texts``)."""
    if len(ids) != len(titles) or len(ids) != vectors.shape[0]:
        raise ValueError("ids, titles and vectors must have the same length")
    if lexical_texts is not None and len(lexical_texts) != len(ids):
        raise ValueError("lexical_texts must have one text per id")
    checksum = _checksum(ids, vectors)
    stem = time.strftime("%Y%m%dT%H%M%S") + f"-{checksum[:8]}"
    version, n = stem, 1
    # The same products rebuilt within a second (another kind, say) get a new name: a version
    # folder may be serving, so it is never replaced.
    while (root / version).exists():
        n += 1
        version = f"{stem}.{n}"
    manifest = Manifest(
        version=version,
        embedder=embedder_name,
        dim=int(vectors.shape[1]),
        count=len(ids),
        kind=kind,
        checksum=checksum,
        created_at=time.time(),
        hnsw_m=hnsw_m if kind == "hnsw" else None,
        lexical=lexical_texts is not None,
        facets=facets is not None,
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        faiss.write_index(make_faiss_index(vectors, kind, hnsw_m), str(tmp / "index.faiss"))
        (tmp / "ids.json").write_text(json.dumps(list(ids)))
        (tmp / "titles.json").write_text(json.dumps(list(titles)))
        np.save(tmp / "embeddings.npy", vectors)
        if text_hashes is not None:
            (tmp / "text_hashes.json").write_text(json.dumps(list(text_hashes)))
        if lexical_texts is not None:
            LexicalIndex.build(lexical_texts).save(tmp / LEXICAL_DIRNAME)
        if facets is not None:
            facets.save(tmp / FACETS_DIRNAME)
        (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
        raise
    tmp.rename(root / version)
    if activate:
        set_current(root, version)
    return manifest


def read_manifest(path: Path) -> Manifest:
    """The manifest of the version folder ``path`` (fields unknown to this code ignored)."""
    raw = json.loads((path / "manifest.json").read_text())
    return Manifest(**{k: v for k, v in raw.items() if k in Manifest.__annotations__})


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


@dataclass
class Ranking:
    """Ranked rows of one text (best first) and the fused (or single-arm) scores."""

    rows: np.ndarray  # (m,) int64
    scores: np.ndarray  # (m,) float
    # The ranked candidate set the top k was cut from (each arm's depth, fused): facets count it.
    candidates: np.ndarray | None = None


# Below this many admitted rows the dense arm ranks them exactly: cheaper than walking a graph
# or scanning the whole flat index for a handful of survivors.
EXACT_FILTER_ROWS = 4096


class Retriever:
    """An index version in memory (both arms) plus the embedder it was built with.

    mode:   the default retrieval mode (a request may ask for another).
    fusion: how hybrid mode merges the arms.
    """

    def __init__(
        self,
        path: Path,
        embedder: Embedder,
        ef_search: int = 128,
        *,
        mode: RetrievalMode = RetrievalMode.hybrid,
        fusion: FusionConfig = FusionConfig(),
    ) -> None:
        self.path = path
        self.manifest = read_manifest(path)
        if embedder.name != self.manifest.embedder or embedder.dim != self.manifest.dim:
            raise ValueError(
                f"index {self.manifest.version} was built with {self.manifest.embedder} "
                f"(dim {self.manifest.dim}), not {embedder.name} (dim {embedder.dim})"
            )
        self.embedder = embedder
        # The vectors (flat codes, or an HNSW graph's storage) are mapped from the file, not
        # copied: API processes on one host share one copy in the page cache (at 1M products
        # 1.5 GB a process; bench/results/scale.json). Version files are never rewritten.
        self.index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_MMAP_IFC)
        if self.manifest.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = ef_search
        self.ids: list[str] = json.loads((path / "ids.json").read_text())
        self.titles: list[str] = json.loads((path / "titles.json").read_text())
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self._embeddings: np.ndarray | None = None
        self.lexical = LexicalIndex.load(path / LEXICAL_DIRNAME) if self.manifest.lexical else None
        self.facets = FacetTable.load(path / FACETS_DIRNAME) if self.manifest.facets else None
        self.ef_search = ef_search
        self.mode = RetrievalMode(mode)
        self.fusion = fusion
        self._dense_search: DenseSearch | None = None  # None: self.index (FAISS)

    @classmethod
    def load_current(
        cls,
        root: Path,
        embedder: Embedder,
        ef_search: int = 128,
        *,
        mode: RetrievalMode = RetrievalMode.hybrid,
        fusion: FusionConfig = FusionConfig(),
    ) -> Retriever:
        version = current_version(root)
        if version is None:
            raise IndexNotFoundError(f"no index under {root}; run `ospo index build`")
        return cls(root / version, embedder, ef_search, mode=mode, fusion=fusion)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def embeddings(self) -> np.ndarray:
        """(N, dim) product embeddings, memory-mapped on first use."""
        if self._embeddings is None:
            self._embeddings = np.load(self.path / "embeddings.npy", mmap_mode="r")
        return self._embeddings

    def text_hashes(self) -> list[str] | None:
        """Hash of each row's embedded text, if this version recorded them."""
        try:
            return json.loads((self.path / "text_hashes.json").read_text())
        except FileNotFoundError:
            return None

    def resolve_mode(self, mode: RetrievalMode | str | None) -> RetrievalMode:
        """The mode a search runs in; lexical arms are refused on versions built without one."""
        chosen = RetrievalMode(mode) if mode is not None else self.mode
        if chosen != RetrievalMode.dense and self.lexical is None:
            if mode is None:
                return RetrievalMode.dense  # an old version: serve what it has
            raise ModeUnavailableError(
                f"index {self.version} has no lexical arm; rebuild it with `ospo index build`"
            )
        return chosen

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """(N,) bool of the rows `filters` admit; None when nothing is restricted."""
        if filters is None or not filters.restricts():
            return None
        if self.facets is None:
            raise ModeUnavailableError(
                f"index {self.version} has no filter columns; rebuild it with `ospo index build`"
            )
        return self.facets.mask(filters, self.row_of)

    def _dense_restricted(self, query: np.ndarray, mask: np.ndarray, depth: int) -> Arm:
        """The dense arm over the admitted rows only (see module docstring)."""
        allowed = np.flatnonzero(mask)
        want = min(depth, allowed.size)
        if want == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if allowed.size > EXACT_FILTER_ROWS:
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bits))
            if self.manifest.kind == "hnsw":
                params = faiss.SearchParametersHNSW(
                    sel=selector, efSearch=max(self.ef_search, want)
                )
            else:
                params = faiss.SearchParameters(sel=selector)
            scores, rows = self.index.search(query[None, :], want, params=params)
            keep = rows[0] >= 0
            if int(keep.sum()) >= want:
                return rows[0][keep].astype(np.int64), scores[0][keep]
        exact = np.asarray(self.embeddings[allowed]) @ query
        top = (
            np.argpartition(-exact, want - 1)[:want] if want < exact.size else np.arange(exact.size)
        )
        top = top[np.lexsort((allowed[top], -exact[top]))]
        return allowed[top].astype(np.int64), exact[top].astype(np.float32)

    def with_dense_search(self, search: DenseSearch | None, embedder: Embedder) -> Retriever:
        """A view of this version whose unfiltered dense arm ranks with ``search`` (None: the
        FAISS index) and embeds with ``embedder``; rows, lexical arm and fusion are shared.
        A reward on a GPU uses it (service/retrieval/exact.py); serving never does."""
        view = copy.copy(self)
        view._dense_search, view.embedder = search, embedder
        return view

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, dim) → scores (B, k), rows (B, k) with -1 where the index has fewer than k items."""
        k = max(1, min(k, max(self.manifest.count, 1)))
        search = self._dense_search or self.index.search
        scores, rows = search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows

    def rank(
        self,
        texts: Sequence[str],
        k: int,
        mode: RetrievalMode | str | None = None,
        timings: dict[str, float] | None = None,
        *,
        lexical_texts: Sequence[str] | None = None,
        filters: Sequence[Filters | None] | None = None,
        candidates: bool = False,
    ) -> list[Ranking]:
        """Top-k rows of each text: one embedder call, one FAISS call, one BM25 pass for all.

        ``lexical_texts`` replaces a text for the lexical arm only (synonym rules expand it);
        ``filters`` restricts each text's rows (see module docstring); ``candidates`` asks for
        each ranking's candidate set (every arm at the fusion depth), which facets count.
        ``timings`` (if given) receives milliseconds per arm: dense_ms, lexical_ms, fusion_ms.
        """
        if not texts:
            return []
        chosen = self.resolve_mode(mode)
        wide = chosen == RetrievalMode.hybrid or candidates
        depth = max(k, self.fusion.depth) if wide else k
        masks = [self.mask(f) for f in filters] if filters is not None else [None] * len(texts)
        dense: list[Arm] = []
        lexical: list[Arm] = []
        t0 = time.perf_counter()
        if chosen != RetrievalMode.lexical:
            vectors = self.embedder.encode(texts)
            scores, rows = self.search_vectors(vectors, depth)
            dense = [
                (r[r >= 0], s[r >= 0]) if m is None else self._dense_restricted(v, m, depth)
                for v, s, r, m in zip(vectors, scores, rows, masks, strict=True)
            ]
        t1 = time.perf_counter()
        if chosen != RetrievalMode.dense:
            assert self.lexical is not None  # resolve_mode guarantees it
            lexical = self.lexical.search(lexical_texts or texts, depth, masks)
        t2 = time.perf_counter()
        if chosen == RetrievalMode.dense:
            pool = [(r.astype(np.int64), s) for r, s in dense]
        elif chosen == RetrievalMode.lexical:
            pool = lexical
        else:
            weights = (self.fusion.dense_weight, self.fusion.lexical_weight)
            pool = [
                fuse((d, lx), weights, self.fusion, depth if candidates else k)
                for d, lx in zip(dense, lexical, strict=True)
            ]
        out = [Ranking(r[:k], s[:k], r if candidates else None) for r, s in pool]
        t3 = time.perf_counter()
        if timings is not None:
            if chosen != RetrievalMode.lexical:
                timings["dense_ms"] = (t1 - t0) * 1000
            if chosen != RetrievalMode.dense:
                timings["lexical_ms"] = (t2 - t1) * 1000
            if chosen == RetrievalMode.hybrid:
                timings["fusion_ms"] = (t3 - t2) * 1000
        return out

    def search_many(
        self,
        texts: Sequence[str],
        k: int,
        mode: RetrievalMode | str | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits of each text (see ``rank``)."""
        return [
            [
                Hit(self.ids[r], self.titles[r], float(s))
                for r, s in zip(rk.rows.tolist(), rk.scores.tolist(), strict=True)
            ]
            for rk in self.rank(texts, k, mode, timings)
        ]

    def search_ids_many(
        self, texts: Sequence[str], k: int, mode: RetrievalMode | str | None = None
    ) -> list[list[str]]:
        return [[self.ids[r] for r in rk.rows] for rk in self.rank(texts, k, mode)]
