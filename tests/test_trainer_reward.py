"""trainer.training.reward on a tiny real index: batching, caching, full vs pooled, batched
attribution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.retrieval.embedder import get_embedder
from service.retrieval.index import Retriever
from service.retrieval.metrics import ndcg_at_k
from tests.conftest import write_title_index
from trainer.method.attribution import attribute, attribute_batch
from trainer.training.reward import RewardModel

# Real Open Icecat titles (ids are the catalogue's).
PRODUCTS = {
    "4148063": "Philips Wireless notebook mouse SPM6800/10",
    "1575802": "Philips Meeting microphone LFH9172/00",
    "1668429": "Tripp Lite Home Theatre Toslink Digital Optical SPDIF Audio Cable, 1M",
    "1659340": "C2G 3ft Cat6 550MHz Snagless Patch Cable Orange networking cable 0.9 m",
    "713212": "Equip Cat.5e SF/UTP Patch Cable, 10m , Green",
    "77032898": 'MSI Optix G241 60.5 cm (23.8") 1920 x 1080 pixels Full HD LED Black',
    "254421": "HP Inkjet 250-sheet Paper Tray 250 sheets",
    "138471": "Brother Film lift off ribbon black",
    "693824": "StarTech.com Slimline DB9 to DB25 Cable Adapter F/M",
    "2132449": "C2G Value Series 3.5mm Stereo Plug/RCA Jack x2 Y-Cable RCA Jack x 2 Black",
}
TARGETS = {
    "network cable": {"1659340": 1.0, "713212": 1.0, "1668429": 0.0},
    "wireless mouse": {"4148063": 1.0, "1575802": 0.0},
}


class CountingEmbedder:
    """Wraps the real embedder and counts encode calls and texts."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.calls: list[int] = []

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_title_index(tmp_path_factory.mktemp("index"), PRODUCTS)
    return root


@pytest.fixture
def retriever(index_root: Path) -> Retriever:
    r = Retriever.load_current(index_root, get_embedder())
    r.embedder = CountingEmbedder(r.embedder)  # type: ignore[assignment]
    return r


def test_score_is_ndcg_of_the_search(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    texts = ["cat6 patch cable", "wireless mouse", "paper tray"]
    keys = ["network cable", "wireless mouse", "network cable"]
    scores = reward.score(list(zip(texts, keys, strict=True)))
    ranked = retriever.search_ids_many(texts, 3)
    expected = [ndcg_at_k(r, TARGETS[k], 3) for r, k in zip(ranked, keys, strict=True)]
    np.testing.assert_allclose(scores, expected)
    assert scores[0] > 0.5 and scores[1] > 0.5 and scores[2] < scores[0]


def test_one_embedder_call_for_many_texts_and_cache_hits(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    calls = retriever.embedder.calls  # type: ignore[attr-defined]
    pairs = [(t, "network cable") for t in ["patch cable", "cat6", "orange cable", "cat6"]]
    pairs += [("patch cable", "wireless mouse"), ("mouse", "wireless mouse")]
    first = reward.score(pairs)
    assert calls == [4]  # 4 distinct texts, one call
    assert reward.stats.embed_calls == 1 and reward.stats.search_calls == 1
    assert reward.stats.cache_hits == 2  # the duplicate "cat6" and the second "patch cable"
    again = reward.score(pairs[:3])
    assert calls == [4] and reward.stats.cache_hits == 5
    np.testing.assert_allclose(again, first[:3])
    reward.clear_cache()
    reward.score(pairs[:1])
    assert calls == [4, 1]


def test_empty_text_scores_zero_without_embedding(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    assert reward.score([("  ", "network cable")]).tolist() == [0.0]
    assert retriever.embedder.calls == []  # type: ignore[attr-defined]


def test_pooled_ranks_only_the_query_pool(retriever: Retriever) -> None:
    full = RewardModel(retriever, TARGETS, k=3, depth=10)
    pooled = RewardModel(retriever, TARGETS, k=3, depth=10, mode="pooled")
    text = "microphone"
    (full_rank,) = full.rankings([(text, "wireless mouse")])
    (pool_rank,) = pooled.rankings([(text, "wireless mouse")])
    assert full_rank[0] == "1575802" and len(full_rank) == len(PRODUCTS)
    assert set(pool_rank) == {"4148063", "1575802"}  # the judged products only
    # Within the pool the order follows the same embeddings as the full ranking.
    assert pool_rank == [pid for pid in full_rank if pid in pool_rank]
    # An off-topic text still ranks the pool, so pooled NDCG is higher than full-index NDCG.
    pairs = [("printer paper", "network cable")]
    assert pooled.score(pairs)[0] >= full.score(pairs)[0]


def test_pool_negatives_are_seeded_and_disjoint(retriever: Retriever) -> None:
    a = RewardModel(retriever, TARGETS, mode="pooled", pool_negatives=3, seed=1)
    b = RewardModel(retriever, TARGETS, mode="pooled", pool_negatives=3, seed=1)
    pool = a._pools["wireless mouse"]
    assert len(pool) == 5 and len(set(pool.tolist())) == 5
    np.testing.assert_array_equal(pool, b._pools["wireless mouse"])


def test_attribute_batch_matches_attribute_with_one_value_call(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    items = [
        ("orange cat6 patch cable, networking", "network cable"),
        ("wireless notebook mouse with microphone", "wireless mouse"),
        ("orange cat6 patch cable, networking", "network cable"),  # duplicate rollout
    ]
    calls: list[int] = []

    def value_fn(pairs: list[tuple[str, str]]) -> np.ndarray:
        calls.append(len(pairs))
        return reward.score(pairs)

    batched = attribute_batch(items, value_fn, rng=np.random.default_rng(0), estimator="shapley")
    assert len(calls) == 1
    assert len(retriever.embedder.calls) == 1  # type: ignore[attr-defined]
    for (text, key), got in zip(items, batched, strict=True):
        want = attribute(text, reward.value_fn(key), estimator="shapley")
        np.testing.assert_allclose(got.phi, want.phi)
        assert got.full_value == pytest.approx(reward.score([(text, key)])[0])
        assert got.phi.sum() == pytest.approx(got.full_value)  # efficiency, v(∅) = 0


def test_attribute_batch_sampled_owen_is_reproducible(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    items = [("cat6 patch cable orange networking cable snagless 3ft", "network cable")]
    kw = {"estimator": "sampled_owen", "budget": 12, "segmentation": "word"}
    a = attribute_batch(items, reward.score, rng=np.random.default_rng(3), **kw)
    b = attribute_batch(items, reward.score, rng=np.random.default_rng(3), **kw)
    np.testing.assert_allclose(a[0].phi, b[0].phi)
    assert a[0].phi.sum() == pytest.approx(a[0].full_value)


def test_attribute_batch_explicit_seeds_replay_attribute(retriever: Retriever) -> None:
    reward = RewardModel(retriever, TARGETS, k=3)
    text, key = "snagless orange cat6 patch cable for networking, 3ft", "network cable"
    kw = {"estimator": "sampled_owen", "budget": 10, "segmentation": "word"}
    (got,) = attribute_batch([(text, key)], reward.score, seeds=[5], **kw)
    want = attribute(text, reward.value_fn(key), rng=np.random.default_rng(5), **kw)
    np.testing.assert_allclose(got.phi, want.phi)
    with pytest.raises(ValueError):
        attribute_batch([(text, key)], reward.score, seeds=[1, 2], **kw)


def test_coalition_values_are_centred_on_the_raw_query(retriever: Retriever) -> None:
    """Expand mode: v(∅) = 0 is the raw query, Σφ = R(query ⊕ additions) − R(query), and a
    phrase that pulls the results away from the targets gets negative credit."""
    from service.policy.prompt import DEFAULT_PROMPT
    from trainer.training.step import coalition_values

    reward = RewardModel(retriever, TARGETS, k=3)
    query, additions = "network cable", "paper tray, ethernet patch cord"
    values = coalition_values(reward, {query: query}, DEFAULT_PROMPT)
    att = attribute(additions, lambda texts: values([(t, query) for t in texts]))
    full, raw = reward.score([(f"{query} {additions}", query), (query, query)])
    assert [s.text for s in att.segments] == ["paper tray, ", "ethernet patch cord"]
    np.testing.assert_allclose(att.phi.sum(), full - raw, atol=1e-12)  # efficiency, centred
    alone = values([("paper tray", query)])[0]
    assert alone < 0 and att.phi[0] < 0  # the off-topic phrase hurts and is blamed
    np.testing.assert_allclose(values([("", query)]), [0.0], atol=1e-12)  # v(∅) = 0


# -- how additions enter retrieval (ExpansionEntry) ------------------------------------------

QUERIES = {"network cable": "network cable", "wireless mouse": "wireless mouse"}


def test_fused_entry_fuses_the_raw_ranking_with_the_expanded_one(retriever: Retriever) -> None:
    from service.domain import ExpansionEntry
    from service.retrieval.fusion import fuse_expansion

    fused = RewardModel(retriever, TARGETS, k=5, entry=ExpansionEntry.fused, queries=QUERIES)
    plain = RewardModel(retriever, TARGETS, k=5)
    text = "network cable audio optical toslink"
    raw_ids, exp_ids = plain.rankings([("network cable", "network cable"), (text, "network cable")])
    arms = [
        (np.array([retriever.row_of[p] for p in ids]), np.zeros(len(ids)))
        for ids in (raw_ids, exp_ids)
    ]
    want = [retriever.ids[r] for r in fuse_expansion(*arms, retriever.fusion, 5)[0].tolist()]
    assert fused.rankings([(text, "network cable")]) == [want]
    assert want != exp_ids  # the entry changed what is searched
    # the raw query is its own ranking under every entry: v(∅) = 0 still holds
    assert fused.rankings([("network cable", "network cable")]) == [raw_ids]


def test_lexical_entry_keeps_the_dense_arm_on_the_raw_query(retriever: Retriever) -> None:
    from service.domain import ExpansionEntry

    lexical = RewardModel(retriever, TARGETS, k=5, entry=ExpansionEntry.lexical, queries=QUERIES)
    text = "wireless mouse microphone"
    rows = retriever.rank(["wireless mouse"], 5, lexical_texts=[text])[0].rows.tolist()
    assert lexical.rankings([(text, "wireless mouse")]) == [[retriever.ids[r] for r in rows]]


def test_an_entry_other_than_concat_needs_the_raw_queries(retriever: Retriever) -> None:
    from service.domain import ExpansionEntry

    with pytest.raises(ValueError, match="raw query"):
        RewardModel(retriever, TARGETS, entry=ExpansionEntry.fused)
