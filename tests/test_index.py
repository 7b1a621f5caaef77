"""FAISS index build/save/load and the batched retriever, with the real embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.retrieval.embedder import get_embedder
from service.retrieval.index import (
    IndexNotFoundError,
    Retriever,
    choose_kind,
    current_version,
    make_faiss_index,
    write_index,
)


def test_choose_kind() -> None:
    assert choose_kind("auto", 10, 100) == "flat"
    assert choose_kind("auto", 101, 100) == "hnsw"
    assert choose_kind("hnsw", 10, 100) == "hnsw"


def test_load_current_and_search(small_index_root: Path) -> None:
    r = Retriever.load_current(small_index_root, get_embedder())
    assert r.manifest.count == 392 and r.manifest.dim == 384
    assert r.manifest.embedder == "all-MiniLM-L6-v2"
    hits = r.search_many(["dining chairs set of 6", "wireless earbuds"], 5)
    assert [len(h) for h in hits] == [5, 5]
    assert "chair" in hits[0][0].title.lower()
    assert hits[0][0].score >= hits[0][-1].score


def test_search_many_equals_one_by_one(small_index_root: Path) -> None:
    r = Retriever.load_current(small_index_root, get_embedder())
    texts = ["usb c cable", "kids toys", "dog bed large", "usb c cable"]
    batched = r.search_ids_many(texts, 10)
    single = [r.search_ids_many([t], 10)[0] for t in texts]
    assert batched == single


def test_k_larger_than_index(tmp_path: Path) -> None:
    emb = get_embedder()
    write_index(
        tmp_path,
        ["a", "b"],
        ["red mug", "blue mug"],
        emb.encode(["red mug", "blue mug"]),
        emb.name,
        "flat",
    )
    r = Retriever.load_current(tmp_path, emb)
    hits = r.search_many(["mug"], 50)[0]
    assert sorted(h.product_id for h in hits) == ["a", "b"]


def test_hnsw_recall_against_flat() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    _, exact = make_faiss_index(x, "flat").search(q, 10)
    _, approx = make_faiss_index(x, "hnsw").search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9


def test_versions_and_errors(tmp_path: Path) -> None:
    emb = get_embedder()
    with pytest.raises(IndexNotFoundError):
        Retriever.load_current(tmp_path, emb)
    v = emb.encode(["a"])
    m1 = write_index(tmp_path, ["a"], ["a"], v, emb.name, "flat")
    assert current_version(tmp_path) == m1.version
    with pytest.raises(ValueError, match="same length"):
        write_index(tmp_path, ["a", "b"], ["a"], v, emb.name, "flat")
    bad = write_index(tmp_path / "other", ["a"], ["a"], np.zeros((1, 8), np.float32), "x", "flat")
    with pytest.raises(ValueError, match="was built with"):
        Retriever(tmp_path / "other" / bad.version, emb)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_vectors_are_mapped_from_the_version_file(tmp_path: Path, kind: str) -> None:
    """Processes on one host share one copy of the index (bench/scale.py measures it): the
    FAISS file is mapped, not read into private memory, and searches as before."""
    emb = get_embedder()
    titles = [f"{c} kettle {i}" for i, c in enumerate(["red", "blue", "green", "steel"] * 5)]
    write_index(tmp_path, titles, titles, emb.encode(titles), emb.name, kind, hnsw_m=8)
    r = Retriever.load_current(tmp_path, emb)
    index_file = str(r.path / "index.faiss")
    assert index_file in Path("/proc/self/maps").read_text()
    exact = np.argsort(-(np.asarray(r.embeddings) @ emb.encode(["blue kettle 1"])[0]))[:5]
    assert r.rank(["blue kettle 1"], 5, "dense")[0].rows.tolist() == exact.tolist()
