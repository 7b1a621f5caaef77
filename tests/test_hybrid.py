"""Hybrid retrieval: the lexical arm beside FAISS in one index version, fusion, modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.domain import FusionMethod, RetrievalMode
from service.retrieval.embedder import get_embedder
from service.retrieval.fusion import FusionConfig, fuse
from service.retrieval.index import ModeUnavailableError, Retriever, write_index
from service.retrieval.lexical import LexicalIndex, analyze, top_k

ROWS = np.array


def test_rrf_hand_computed() -> None:
    dense = (ROWS([3, 1, 2]), np.array([0.9, 0.8, 0.1]))
    lexical = (ROWS([1, 4]), np.array([12.0, 3.0]))
    rows, scores = fuse((dense, lexical), (1.0, 1.0), FusionConfig(rrf_k=60), k=10)
    # row 1: 1/62 + 1/61; row 3: 1/61; row 4: 1/62; row 2: 1/63
    assert rows.tolist() == [1, 3, 4, 2]
    np.testing.assert_allclose(scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63])


def test_rrf_weights_and_ties() -> None:
    a = (ROWS([5, 6]), np.array([1.0, 0.5]))
    b = (ROWS([6, 5]), np.array([1.0, 0.5]))
    rows, _ = fuse((a, b), (1.0, 1.0), FusionConfig(), k=2)
    assert rows.tolist() == [5, 6]  # equal fused scores: lower row first, deterministic
    rows, _ = fuse((a, b), (1.0, 2.0), FusionConfig(), k=2)
    assert rows.tolist() == [6, 5]  # the heavier arm decides
    rows, _ = fuse((a, b), (1.0, 0.0), FusionConfig(), k=2)
    assert rows.tolist() == [5, 6]  # a zero weight silences an arm


def test_score_fusion_min_max() -> None:
    dense = (ROWS([1, 2]), np.array([0.9, 0.5]))
    lexical = (ROWS([2, 3]), np.array([20.0, 10.0]))
    cfg = FusionConfig(method=FusionMethod.score)
    rows, scores = fuse((dense, lexical), (1.0, 1.0), cfg, k=3)
    # normalised: dense {1: 1, 2: 0}, lexical {2: 1, 3: 0}
    assert rows.tolist() == [1, 2, 3]
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.0])


def test_fuse_empty_arms() -> None:
    empty = (ROWS([], dtype=np.int64), np.array([]))
    rows, _ = fuse((empty, empty), (1.0, 1.0), FusionConfig(), k=5)
    assert rows.size == 0


def test_analyzer_stems_and_drops_stopwords() -> None:
    assert analyze(["The Wireless Headphones for running"]) == [["wireless", "headphon", "run"]]
    assert analyze(["headphone"])[0] == analyze(["headphones"])[0]


def test_lexical_index_round_trip(tmp_path: Path) -> None:
    texts = ["red mug ceramic", "blue mug", "usb cable 2m", "wireless earbuds"]
    index = LexicalIndex.build(texts)
    index.save(tmp_path / "lex")
    loaded = LexicalIndex.load(tmp_path / "lex")
    (rows, scores), (none_rows, _) = loaded.search(["mugs", "zzz unknown"], 10)
    assert sorted(rows.tolist()) == [0, 1] and np.all(np.diff(scores) <= 0)
    assert none_rows.size == 0  # no term matches: no results, not random ones
    np.testing.assert_allclose(loaded.scores(["mug"]), index.scores(["mug"]))


def test_top_k_orders_and_skips_zero() -> None:
    rows, scores = top_k(np.array([0.0, 2.0, 5.0, 2.0, 0.0]), 3)
    assert rows.tolist() == [2, 1, 3] and scores.tolist() == [5.0, 2.0, 2.0]


def test_one_version_holds_both_arms(small_index_root: Path) -> None:
    r = Retriever.load_current(small_index_root, get_embedder())
    assert r.manifest.lexical and r.lexical is not None and r.lexical.count == r.manifest.count
    query = ["dining chairs set of 6"]
    timings: dict[str, float] = {}
    hybrid = r.search_ids_many(query, 10)[0]
    r.search_many(query, 10, "hybrid", timings)
    assert set(timings) == {"dense_ms", "lexical_ms", "fusion_ms"}
    dense = r.search_ids_many(query, 10, "dense")[0]
    lexical = r.search_ids_many(query, 10, "lexical")[0]
    assert hybrid != dense or hybrid != lexical
    assert set(hybrid[:3]) <= set(dense) | set(lexical)  # the top of the fusion comes from the arms


def test_old_version_without_lexical_serves_dense(tmp_path: Path) -> None:
    emb = get_embedder()
    texts = ["red mug", "blue mug"]
    write_index(tmp_path, ["a", "b"], texts, emb.encode(texts), emb.name, "flat")
    r = Retriever.load_current(tmp_path, emb)
    assert r.resolve_mode(None) == RetrievalMode.dense  # the default degrades, never fails
    assert r.search_ids_many(["mug"], 2)  # still serves
    with pytest.raises(ModeUnavailableError):
        r.search_ids_many(["mug"], 2, "lexical")  # an explicit request is refused


class CountingEmbedder:
    """The real embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        self.inner = get_embedder()
        self.name, self.dim, self.embedded = self.inner.name, self.inner.dim, 0

    def encode(self, texts, progress: bool = False):  # type: ignore[no-untyped-def]
        self.embedded += len(texts)
        return self.inner.encode(texts)


def test_rebuild_from_db_embeds_only_changed_products(db_url: str, tmp_path: Path) -> None:
    from service.db.engine import session_scope
    from service.records import ProductRecord
    from service.repositories.products import upsert_products
    from service.retrieval.build import build_index_from_db

    products = [
        ProductRecord("p1", "red ceramic mug", "test"),
        ProductRecord("p2", "usb c cable 2m", "test"),
        ProductRecord("p3", "wireless earbuds", "test"),
    ]
    with session_scope(db_url) as s:
        upsert_products(s, products)
    emb = CountingEmbedder()
    first = build_index_from_db(db_url, tmp_path, emb)  # type: ignore[arg-type]
    assert emb.embedded == 3 and first.lexical
    with session_scope(db_url) as s:
        upsert_products(s, [ProductRecord("p2", "usb c charging cable 1m", "test")])
        upsert_products(s, [ProductRecord("p4", "dining chair oak", "test")])
    second = build_index_from_db(db_url, tmp_path, emb)  # type: ignore[arg-type]
    assert emb.embedded == 3 + 2  # only the changed and the new product
    assert second.version != first.version
    r = Retriever.load_current(tmp_path, get_embedder())
    assert r.search_ids_many(["charging cable"], 1, "lexical")[0] == ["p2"]
    assert r.search_ids_many(["oak chair"], 1, "dense")[0] == ["p4"]
    fresh = emb.inner.encode([r_.search_text for r_ in products[:1]])
    np.testing.assert_allclose(r.embeddings[r.row_of["p1"]], fresh[0], atol=1e-6)


def test_a_catalogue_without_any_term_still_builds(tmp_path: Path) -> None:
    """Titles that are all stopwords or single characters leave BM25 no vocabulary: the arm is
    built anyway and matches nothing (instead of failing the whole index version)."""
    index = LexicalIndex.build(["0", "a", "the"])
    assert index.count == 3
    assert not index.scores(["the 0", "anything"]).any()


def test_a_failed_build_leaves_no_folder_and_keeps_serving(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    emb = get_embedder()
    texts = ["red mug", "blue mug"]
    first = write_index(tmp_path, ["a", "b"], texts, emb.encode(texts), emb.name, "flat",
                        lexical_texts=texts)  # fmt: skip

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LexicalIndex, "build", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_index(tmp_path, ["a", "b"], texts, emb.encode(texts), emb.name, "flat",
                    lexical_texts=texts)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["CURRENT", first.version])
    assert Retriever.load_current(tmp_path, emb).version == first.version
