"""Ranking metrics against hand-computed cases and scikit-learn's ndcg_score."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score

from service.retrieval.metrics import (
    bootstrap_ci,
    dcg,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)


def test_dcg_hand_computed() -> None:
    assert dcg([3, 2, 3, 0, 1, 2], 6) == pytest.approx(
        3 + 2 / math.log2(3) + 3 / 2 + 0 + 1 / math.log2(6) + 2 / math.log2(7)
    )


def test_ndcg_hand_computed() -> None:
    targets = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert ndcg_at_k(["a", "b", "c"], targets, 3) == pytest.approx(1.0)
    # c, b, a: (1 + 2/log2 3 + 3/2) / (3 + 2/log2 3 + 1/2)
    expected = (1 + 2 / math.log2(3) + 1.5) / (3 + 2 / math.log2(3) + 0.5)
    assert ndcg_at_k(["c", "b", "a"], targets, 3) == pytest.approx(expected)
    # Missing a relevant product costs: ideal uses all judged products.
    assert ndcg_at_k(["a", "x"], targets, 2) == pytest.approx(3 / (3 + 2 / math.log2(3)))
    assert ndcg_at_k(["x", "y"], targets, 2) == 0.0
    assert ndcg_at_k(["a"], {"a": 0.0}, 10) == 0.0


def test_recall_and_mrr() -> None:
    targets = {"a": 1.0, "b": 0.5, "z": 0.0}
    assert recall_at_k(["x", "b", "a"], targets, 2) == 0.5
    assert recall_at_k(["x", "b", "a"], targets, 3) == 1.0
    assert reciprocal_rank(["x", "z", "b"], targets) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"], targets) == 0.0
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], targets, 0)


@settings(max_examples=200, deadline=None)
@given(
    gains=st.lists(st.integers(0, 3), min_size=2, max_size=30),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 30),
)
def test_ndcg_matches_sklearn(gains: list[int], seed: int, k: int) -> None:
    """Whole-list rankings: our NDCG@k equals scikit-learn's (linear gains, log2 discount)."""
    assume(sum(gains) > 0)  # scikit-learn's NDCG of an all-zero truth is undefined (0/0)
    rng = np.random.default_rng(seed)
    scores = rng.permutation(len(gains)).astype(float)  # distinct: no tie handling differences
    ids = [f"p{i}" for i in range(len(gains))]
    ranked = [ids[i] for i in np.argsort(-scores)]
    ours = ndcg_at_k(ranked, {ids[i]: float(g) for i, g in enumerate(gains)}, k)
    theirs = ndcg_score([gains], [scores], k=k)
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_bootstrap_interval_contains_mean() -> None:
    values = np.random.default_rng(0).random(200)
    mean, lo, hi = bootstrap_ci(values)
    assert lo < mean < hi
    assert mean == pytest.approx(values.mean())
    assert hi - lo < 0.15
