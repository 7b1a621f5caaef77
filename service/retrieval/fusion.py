"""Fusing the ranked lists of the dense and lexical arms into one ranking (pure numpy).

Each arm hands over its top candidates for one query as ``(rows, scores)``, best first, rows
being index rows (the same numbering in both arms: one index version covers both). Two methods:

* ``rrf`` (default) — reciprocal rank fusion: score(d) = Σ_arm w_arm / (k + rank_arm(d)), rank
  1-based; a document an arm did not return contributes nothing from that arm. Robust to the
  arms' score scales, which differ wildly (cosine in [-1, 1] vs unbounded BM25).
* ``score`` — min-max normalise each arm's candidate scores to [0, 1] per query (missing = 0)
  and take the weighted sum. Uses the score gaps RRF throws away; more sensitive to outliers.

Ties are broken by row number so a fused ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from service.domain import FusionMethod

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class FusionConfig:
    """How hybrid retrieval merges its arms (see module docstring)."""

    method: FusionMethod = FusionMethod.rrf
    rrf_k: float = 60.0
    # 3 : 1, measured on human + assessed grades (bench/fusion_grades.py): the 1 : 2 that
    # bench/lexical.py chose on human grades alone favoured the pools lexical search had filled.
    dense_weight: float = 3.0
    lexical_weight: float = 1.0
    depth: int = 100  # candidates each arm contributes before fusion

    def __post_init__(self) -> None:
        if self.rrf_k < 0 or self.dense_weight < 0 or self.lexical_weight < 0:
            raise ValueError("rrf_k and arm weights must be >= 0")
        if self.depth < 1:
            raise ValueError("fusion depth must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> FusionConfig:
        return cls(
            method=settings.fusion_method,
            rrf_k=settings.rrf_k,
            dense_weight=settings.dense_weight,
            lexical_weight=settings.lexical_weight,
            depth=settings.fusion_depth,
        )


Arm = tuple[np.ndarray, np.ndarray]  # (rows (m,), scores (m,)), best first, no -1 rows


def _arm_contribution(arm: Arm, weight: float, cfg: FusionConfig) -> tuple[np.ndarray, np.ndarray]:
    rows, scores = (np.asarray(a) for a in arm)
    if rows.size == 0 or weight == 0:
        return rows[:0].astype(np.int64), np.zeros(0)
    if cfg.method == FusionMethod.rrf:
        ranks = np.arange(1, rows.size + 1, dtype=np.float64)
        return rows.astype(np.int64), weight / (cfg.rrf_k + ranks)
    s = scores.astype(np.float64)
    lo, hi = float(s.min()), float(s.max())
    norm = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    return rows.astype(np.int64), weight * norm


def fuse_expansion(raw: Arm, expanded: Arm, cfg: FusionConfig, k: int) -> Arm:
    """The raw query's ranking and the expanded query's, fused by reciprocal rank with equal
    weights (``ExpansionEntry.fused``): a product both rankings hold rises, one only the
    additions find enters lower down, and a bad addition cannot push the raw query's results
    far (bench/grounding.py: a random title term costs −0.004 NDCG@10 fused, −0.096 when
    concatenated; the best term keeps +0.076 of its +0.106)."""
    return fuse((raw, expanded), (1.0, 1.0), replace(cfg, method=FusionMethod.rrf), k)


def fuse(arms: Sequence[Arm], weights: Sequence[float], cfg: FusionConfig, k: int) -> Arm:
    """Top ``k`` of the fused ranking: (rows (≤k,), fused scores (≤k,)), best first."""
    parts = [_arm_contribution(a, w, cfg) for a, w in zip(arms, weights, strict=True)]
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if rows.size == 0:
        return rows, np.zeros(0)
    scores = np.concatenate([p[1] for p in parts])
    unique, inverse = np.unique(rows, return_inverse=True)
    total = np.zeros(unique.size)
    np.add.at(total, inverse, scores)
    order = np.lexsort((unique, -total))[:k]  # by score desc, then row asc
    return unique[order], total[order]
