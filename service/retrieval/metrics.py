"""Ranking metrics, pure functions over ranked ids and graded gains.

NDCG uses linear gains and the log2(rank + 1) discount (the convention of scikit-learn's
`ndcg_score` and of the ESCI/Chorus evaluations); the ideal DCG ranks *all* judged products,
not only the retrieved ones, so a ranking that misses relevant products is penalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def dcg(gains: Sequence[float], k: int) -> float:
    g = np.asarray(list(gains)[:k], dtype=np.float64)
    if g.size == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, g.size + 2))
    return float(np.sum(g * discounts))


def ndcg_at_k(ranked: Sequence[str], targets: Mapping[str, float], k: int = 10) -> float:
    """NDCG@k of `ranked` product ids against `targets` {product id: gain ≥ 0}.

    0.0 when no target has a positive gain (nothing could be found, nothing to reward).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    ideal = dcg(sorted((g for g in targets.values() if g > 0), reverse=True), k)
    if ideal <= 0:
        return 0.0
    return dcg([max(targets.get(pid, 0.0), 0.0) for pid in ranked[:k]], k) / ideal


# Below this share of graded products in the top 10, an NDCG says more about the judged pool
# than about the ranking (service.grades): results carry ``reliable: false``.
MIN_JUDGED = 0.9


def judged_at_k(ranked: Sequence[str], targets: Mapping[str, float], k: int = 10) -> float:
    """Share of the top k with any grade (gain 0 included): how far NDCG@k can be trusted.

    An ungraded product scores as irrelevant, so a ranking that leaves the graded pool loses
    NDCG for want of grades; judged@k says how much of the ranking that was. A ranking shorter
    than k counts its missing ranks as judged (nothing there to grade).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    top = list(ranked[:k])
    if not top:
        return 1.0
    return sum(1 for pid in top if pid in targets) / len(top)


def recall_at_k(
    ranked: Sequence[str], targets: Mapping[str, float], k: int = 10, min_gain: float = 0.0
) -> float:
    """Share of relevant products (gain > min_gain) found in the top k."""
    relevant = {pid for pid, g in targets.items() if g > min_gain}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def reciprocal_rank(
    ranked: Sequence[str], targets: Mapping[str, float], min_gain: float = 0.0
) -> float:
    """1 / rank of the first relevant product (gain > min_gain), 0 if none is retrieved."""
    for i, pid in enumerate(ranked, 1):
        if targets.get(pid, 0.0) > min_gain:
            return 1.0 / i
    return 0.0


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean over queries."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)
