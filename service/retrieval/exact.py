"""Exact dense search as torch matmuls on any device, and the choice of a reward's dense search.

A flat FAISS index answers a query with the k rows of largest inner product, computed exactly.
``ExactSearch`` computes the same thing as ``queries @ vectors.T`` followed by ``topk``, on
whatever device holds the vectors: on a GPU worker the OSPO reward (thousands of coalition texts
per step) then ranks without faiss-gpu, whose wheel is large and tied to one CUDA version. Equal
scores (duplicate products) rank the higher row first, as FAISS's heaps order them; scores are
float32 like FAISS's.

``dense_search_on`` decides, once per reward, what the dense arm of a retriever runs on:

    backend  device  index                          dense arm
    auto     cpu     any                            the retriever's FAISS index (unchanged)
    auto     cuda    flat, vectors fit on the GPU   ExactSearch on the GPU
    auto     cuda    otherwise                      FAISS, cloned to the GPU when the installed
                                                    faiss is a GPU build and the index is flat
    torch    any     any                            ExactSearch on ``device`` (exact, so on an
                                                    HNSW index it can differ from serving)
    faiss    any     any                            the retriever's FAISS index

The embedder moves to ``device`` too. The lexical arm (bm25s) and fusion are the retriever's
own in every case, so a ranking differs from the CPU one only where float rounding reorders
near-equal dense scores (tests/test_exact_search.py compares them on a real index).
This module imports torch but not faiss (bench/gpu_check.py uses it where faiss is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from service.retrieval.index import Retriever

DenseBackend = Literal["auto", "faiss", "torch"]
# The vectors may take this share of the GPU memory that is free when the reward starts.
GPU_SHARE = 0.25
# Scores computed at once (queries × rows): 64 Mi floats = 256 MiB, then the next chunk.
MAX_SCORES = 1 << 26


class ExactSearch:
    """(N, dim) vectors on ``device``; ``search`` returns FAISS's (scores, rows) for queries."""

    def __init__(
        self, vectors: np.ndarray, device: str | torch.device = "cpu", max_scores: int = MAX_SCORES
    ) -> None:
        array = np.array(vectors, dtype=np.float32, order="C")  # a copy: the index's is read-only
        self.device = torch.device(device)
        self.max_scores = max_scores
        self.vectors = torch.from_numpy(array).to(self.device)  # (N, dim)

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, dim) float32 → scores (B, k) float32, rows (B, k) int64, best first."""
        k = min(k, self.count)
        B = int(queries.shape[0])
        if B == 0 or k == 0:
            return np.zeros((B, k), dtype=np.float32), np.zeros((B, k), dtype=np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        chunk = max(1, self.max_scores // self.count)
        parts = [
            torch.topk(q[a : a + chunk] @ self.vectors.T, k, dim=1) for a in range(0, B, chunk)
        ]
        scores = torch.cat([p.values for p in parts]).cpu().numpy()
        rows = torch.cat([p.indices for p in parts]).cpu().numpy().astype(np.int64)
        order = np.lexsort((-rows, -scores), axis=-1)  # equal scores: higher row first
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    @staticmethod
    def fits(n: int, dim: int, device: str | torch.device) -> bool:
        """Whether (n, dim) float32 vectors fit on ``device`` (always on the CPU)."""
        device = torch.device(device)
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        return n * dim * 4 <= GPU_SHARE * free


def _faiss_on_gpu(retriever: Retriever) -> object | None:
    """The retriever's flat index cloned onto the GPU, if the installed faiss can (faiss-gpu)."""
    import faiss

    if retriever.manifest.kind != "flat" or not hasattr(faiss, "StandardGpuResources"):
        return None
    if faiss.get_num_gpus() < 1:
        return None
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, retriever.index)


def dense_search_on(
    retriever: Retriever, device: str | torch.device = "cpu", backend: DenseBackend = "auto"
) -> Retriever:
    """``retriever``, or a view of it whose dense arm (and embedder) run on ``device``, chosen
    by the table in the module docstring. The view shares the lexical arm, rows and fusion."""
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"dense backend must be auto, faiss or torch, got {backend!r}")
    device = torch.device(device)
    if device.type == "cpu" and backend != "torch":
        return retriever  # the path every CPU process has always taken
    embedder = retriever.embedder
    if device.type != "cpu":
        from service.retrieval.embedder import get_embedder

        embedder = get_embedder(embedder.name, getattr(embedder, "batch_size", 64), str(device))
    manifest = retriever.manifest
    use_torch = backend == "torch" or (
        backend == "auto"
        and manifest.kind == "flat"
        and ExactSearch.fits(manifest.count, manifest.dim, device)
    )
    if use_torch:
        search = ExactSearch(np.asarray(retriever.embeddings), device).search
    else:
        gpu_index = _faiss_on_gpu(retriever) if backend == "auto" else None
        search = gpu_index.search if gpu_index is not None else None  # type: ignore[attr-defined]
    return retriever.with_dense_search(search, embedder)


__all__ = ["DenseBackend", "ExactSearch", "dense_search_on"]
