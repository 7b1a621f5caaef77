"""Dense search as a torch matmul (service/retrieval/exact.py) ranks as the flat FAISS index does.

On a GPU worker the reward ranks with ``ExactSearch`` on the GPU; here the same code runs on the
CPU with the torch path forced, over the 392-product ESCI index with the real embedder, and
must give FAISS's rows, and the reward the same rankings in every retrieval mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.domain import RetrievalMode
from service.retrieval.embedder import get_embedder
from service.retrieval.exact import ExactSearch, dense_search_on
from service.retrieval.index import Retriever
from trainer.training.reward import RewardModel

QUERIES = [
    "wireless mouse", "usb c charger", "phone case black", "laptop stand", "hdmi cable 6ft",
    "kids toys", "coffee maker", "running shoes men", "led light strip", "water bottle",
    "bluetooth speaker waterproof", "desk lamp", "screen protector iphone", "yoga mat",
    "batteries aa", "gaming headset with mic", "phone", "cable", "black", "gift for dad",
    "kitchen knife set", "dog toys", "notebook", "pens", "backpack", "sunglasses",
]  # fmt: skip


@pytest.fixture(scope="module")
def retriever(small_index_root: Path) -> Retriever:
    return Retriever.load_current(small_index_root, get_embedder())


def test_exact_search_returns_the_flat_index_rows(retriever: Retriever) -> None:
    queries = retriever.embedder.encode(QUERIES)
    search = ExactSearch(np.asarray(retriever.embeddings), "cpu")
    for k in (1, 10, 100):  # the depths rewards and fusion ask for
        scores, rows = search.search(queries, k)
        want_scores, want_rows = retriever.index.search(queries, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # The whole catalogue: two summation orders may swap rows whose scores differ by less than
    # float32 rounding (seen here: one pair 1.3e-8 apart, near score 0), never more.
    rows = search.search(queries, retriever.manifest.count)[1]
    want = retriever.index.search(queries, retriever.manifest.count)[1]
    exact = queries.astype(np.float64) @ np.asarray(retriever.embeddings, np.float64).T
    for q, pos in np.argwhere(rows != want):
        assert abs(exact[q, rows[q, pos]] - exact[q, want[q, pos]]) < 1e-6
    # scores computed 7 queries at a time: the chunks join up in order
    chunked = ExactSearch(np.asarray(retriever.embeddings), "cpu", max_scores=7 * search.count)
    np.testing.assert_array_equal(chunked.search(queries, 10)[1], search.search(queries, 10)[1])


def test_equal_scores_rank_as_faiss_ranks_them() -> None:
    import faiss

    vectors = np.eye(4, dtype=np.float32)[[2, 0, 2, 1, 2]]  # rows 0, 2 and 4 are the same vector
    query = np.eye(4, dtype=np.float32)[[2]]
    scores, rows = ExactSearch(vectors).search(query, 4)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    assert (
        rows.tolist() == index.search(query, 4)[1].tolist() == [[4, 2, 0, 3]]
    )  # all ties: higher row first
    assert scores[0].tolist() == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_reward_rankings_equal_with_the_torch_path_forced(
    retriever: Retriever, mode: RetrievalMode
) -> None:
    targets = {"any": {retriever.ids[0]: 1.0}}
    pairs = [(q, "any") for q in QUERIES]
    faiss_reward = RewardModel(retriever, targets, k=10, depth=50, retrieval=mode)
    torch_reward = RewardModel(retriever, targets, k=10, depth=50, retrieval=mode, dense="torch")
    assert faiss_reward.retriever is retriever  # on the CPU, auto keeps the FAISS path
    assert torch_reward.retriever is not retriever
    assert torch_reward.rankings(pairs) == faiss_reward.rankings(pairs)
    np.testing.assert_array_equal(torch_reward.score(pairs), faiss_reward.score(pairs))


def test_only_a_view_changes(retriever: Retriever) -> None:
    view = dense_search_on(retriever, "cpu", "torch")
    assert view.lexical is retriever.lexical and view.ids is retriever.ids
    assert retriever.search_ids_many(["usb c charger"], 5) == view.search_ids_many(
        ["usb c charger"], 5
    )
    with pytest.raises(ValueError, match="dense backend"):
        dense_search_on(retriever, "cpu", "gpu")  # type: ignore[arg-type]
