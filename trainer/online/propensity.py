"""Examination propensities per rank, from randomised adjacent swaps; position-debiased gains.

Shoppers click what they look at, and they look at the top: a plain engagement average rewards
whatever the current ranking already put first. Serving randomises a small share of searches
(service/services/search.py): such a search draws a pair k in 1..K-1 and a fair coin, and on
heads shows the results ranked k and k+1 swapped; it logs ``searches.explore_pair = k`` and
``searches.explore_swapped``, and ``product_ids`` is the order as shown. This file turns those
searches into the examination propensity of each rank, and engagement into gains weighted by
its inverse. Written to be read top to bottom; every function is pure (numpy), except the last
one, which reads the logs.

Notation:

    S_k            logged searches that explored pair k (each shows >= k + 1 results)
    a in {u, s}    arm: shown as ranked (u, unswapped) or with k and k+1 swapped (s)
    n_k^a          searches of S_k in arm a
    c_{k,r}^a      of those, searches with an engagement (click, add to cart or purchase) on
                   the result shown at rank r, r in {k, k+1}
    p(r)           examination propensity of rank r relative to rank 1 (p(1) = 1)
    rho_k          p(k+1) / p(k)
    p0(r)          the prior (1/r)^eta0, eta0 = ``prior_eta`` (default 1)

Model (position-based, PBM): P(engage with d at rank r) = p(r) gamma(d), gamma the shopper's
interest in d once seen. Call A the result the ranker put at k and B the one at k+1. A and B
sit at rank k in one arm and at k+1 in the other, and the fair coin makes the arms alike in
everything else, so with gamma_A, gamma_B averaged over S_k:

    E[c_{k,k}^u / n_k^u   + c_{k,k}^s / n_k^s]   = p(k)   (gamma_A + gamma_B)
    E[c_{k,k+1}^u / n_k^u + c_{k,k+1}^s / n_k^s] = p(k+1) (gamma_A + gamma_B)

    rho_k = (c_{k,k+1}^u / n_k^u + c_{k,k+1}^s / n_k^s) / (c_{k,k}^u / n_k^u + c_{k,k}^s / n_k^s)

is free of relevance, and  p(r) = prod_{k < r} rho_k.  (The swap-intervention idea of Joachims,
Swaminathan & Schnabel, WSDM 2017, with adjacent pairs so that every swap is cheap for the
shopper.) Normalising by arm size keeps the estimate right when the coin's arms are unequal.

Position-debiased gain of (query, product), over its N impressions i (logged searches of the
query that showed it, at rank r_i; engagement e_i in [0, 1], the strongest event's weight, as
in trainer/online/interaction_labels.py):

    plain   G = (1/N) sum_i e_i                        (the engagement average)
    ips     G = (1/N) sum_i e_i / p(r_i)               (inverse propensity scoring)
    ratio   G = sum_i e_i / sum_i p(r_i)               (self-normalised: engagement per
                                                        expected examination)

each clipped to [0, 1]. Under PBM, E[e_i] = p(r_i) gamma, so ips and ratio both estimate gamma,
the engagement the product would get at rank 1; plain estimates gamma times the mean p of the
ranks it happened to be shown at.

Documented decisions
--------------------
* Which debiased gain: ``ips`` by default. It is unbiased for any N, and its one weakness — an
  engagement at a rarely seen rank counts 1/p times — is bounded by the propensity floor below
  and by the clip of G to [0, 1]. ``ratio`` (lower variance, consistent but biased for small N)
  is kept for comparison; tests/test_propensity.py measures both against plain on simulated
  logs and the note reports the numbers.
* Engagement, not clicks, counts as evidence of examination at a rank (a purchase implies the
  shopper saw the result). Ranks are read from ``product_ids`` (the order as shown); the
  ingest-filled ``events.position`` is the same number, but ``product_ids`` also covers rows
  logged before that column existed.
* Minimum support. A pair with fewer than ``min_pair_support`` explored searches, with an
  empty arm, or with no engagement at rank k (rho undefined) is not estimated from data:
  rho_k = p0(k+1) / p0(k), i.e. the rank keeps the previous rank's estimate scaled by the
  prior's decay. Ranks past the deepest explored pair + 1 are chained the same way. The
  default support, 100 searches per pair, gives roughly ±25% (95%) on one ratio at the click
  rates of the simulator's defaults; more support narrows it as 1/sqrt(n).
* ``supported`` (what `auto` label mining switches on): at least one pair explored, and every
  pair from 1 to the deepest explored one estimated from data. Then the whole curve over the
  explored ranks rests on the logs rather than on the prior.
* Clipping. Propensities are clipped from below at ``clip`` (default 0.05, weights at most 20),
  never from above: a noisy rho_k > 1 is kept, since some layouts do examine rank 2 more than
  rank 1, and the gain clip to [0, 1] bounds its effect on labels.
* Interval. A stratified multinomial bootstrap: each arm of each pair is resampled from its
  own 2x2 table of (engaged at k, engaged at k+1) counts, ``bootstrap`` times; the replicated
  ratios are chained like the estimate (prior-filled ranks are multiplied by the same
  constant), and the interval is the percentile interval at ``level`` of each rank's
  replicates (a replicate whose rate at k is 0 is left out). Not clipped.
* Impressions outside the shown list (an engaged product that the search did not show, e.g.
  found by browsing) count once with p = 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

DebiasMethod = Literal["ips", "ratio"]
ENGAGEMENTS = frozenset({"click", "add_to_cart", "purchase"})


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PropensityConfig:
    """min_pair_support: explored searches of a pair below which its ratio is the prior's.
    prior_eta:        eta0 of the prior p0(r) = (1/r)^eta0.
    clip:             propensity floor (inverse weights at most 1/clip).
    bootstrap:        bootstrap replicates of the interval (0: no interval, lo = hi = nan).
    level:            coverage of the interval.
    seed:             seed of the bootstrap.
    method:           the debiased gain: "ips" or "ratio" (module docstring)."""

    min_pair_support: int = 100
    prior_eta: float = 1.0
    clip: float = 0.05
    bootstrap: int = 500
    level: float = 0.95
    seed: int = 0
    method: DebiasMethod = "ips"

    def __post_init__(self) -> None:
        if self.min_pair_support < 1:
            raise ValueError(f"min_pair_support must be >= 1, got {self.min_pair_support!r}")
        if self.prior_eta < 0:
            raise ValueError(f"prior_eta must be >= 0, got {self.prior_eta!r}")
        if not 0.0 < self.clip <= 1.0:
            raise ValueError(f"clip must be in (0, 1], got {self.clip!r}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level!r}")
        if self.method not in ("ips", "ratio"):
            raise ValueError(f"method must be 'ips' or 'ratio', got {self.method!r}")


# ---------------------------------------------------------------------------------------------
# 1. The prior
# ---------------------------------------------------------------------------------------------


def prior_curve(n: int, eta: float = 1.0) -> np.ndarray:
    """p0(1..n) = (1/r)^eta, shape (n,)."""
    return (1.0 / np.arange(1, n + 1, dtype=np.float64)) ** eta


# ---------------------------------------------------------------------------------------------
# 2. Explored searches → per-pair 2x2x2 tables
# ---------------------------------------------------------------------------------------------


def pair_observations(
    searches: Iterable[tuple[str, Sequence[str], int | None, bool | None]],
    engaged: Mapping[str, set[str]],
) -> list[tuple[int, bool, bool, bool]]:
    """(k, swapped, engaged at rank k, engaged at rank k+1) for every search that explored.

    searches: (search id, product ids as shown, explore_pair, explore_swapped).
    engaged:  search id → products with an engagement event in that search.
    Searches that did not explore, or show fewer than k + 1 results, are skipped.
    """
    out = []
    for sid, shown, k, swapped in searches:
        if k is None or k < 1 or len(shown) < k + 1:
            continue
        hit = engaged.get(sid, set())
        out.append((int(k), bool(swapped), shown[k - 1] in hit, shown[k] in hit))
    return out


def pair_tables(observations: Iterable[tuple[int, bool, bool, bool]]) -> dict[int, np.ndarray]:
    """k → int64 counts of shape (2, 2, 2): [arm (0 unswapped, 1 swapped), engaged at k,
    engaged at k+1]."""
    tables: dict[int, np.ndarray] = defaultdict(lambda: np.zeros((2, 2, 2), dtype=np.int64))
    for k, swapped, at_k, at_next in observations:
        tables[k][int(swapped), int(at_k), int(at_next)] += 1
    return dict(tables)


# ---------------------------------------------------------------------------------------------
# 3. One pair: rho_k and its bootstrap replicates
# ---------------------------------------------------------------------------------------------


def arm_rates(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed per-arm engagement rates at k and k+1 of tables shaped (..., 2, 2, 2); nan
    where an arm is empty."""
    n = tables.sum(axis=(-1, -2)).astype(np.float64)  # (..., 2) searches per arm
    at_k = tables[..., 1, :].sum(axis=-1)  # (..., 2)
    at_next = tables[..., :, 1].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (at_k / n).sum(axis=-1), (at_next / n).sum(axis=-1)


def pair_ratio(table: np.ndarray) -> float:
    """rho_k of one pair's table; nan when an arm is empty or nothing was engaged at k."""
    rate_k, rate_next = arm_rates(table)
    if not np.isfinite(rate_k) or rate_k <= 0:
        return float("nan")
    return float(rate_next / rate_k)


def bootstrap_ratios(table: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """rho_k of ``replicates`` stratified multinomial resamples (each arm from its own cells);
    shape (replicates,), nan where a replicate has no engagement at k."""
    reps = np.empty((replicates, 2, 2, 2), dtype=np.int64)
    for arm in (0, 1):
        n = int(table[arm].sum())
        probs = table[arm].ravel() / n if n else np.full(4, 0.25)
        reps[:, arm] = rng.multinomial(n, probs, size=replicates).reshape(replicates, 2, 2)
    rate_k, rate_next = arm_rates(reps)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rate_k > 0, rate_next / rate_k, np.nan)


# ---------------------------------------------------------------------------------------------
# 4. The curve: chained ratios, prior fallback, interval, clip
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStats:
    """One explored pair: support and what it contributed."""

    k: int
    searches: int
    unswapped: int
    swapped: int
    engaged_k: int  # searches with an engagement at rank k (both arms)
    engaged_next: int  # ... at rank k + 1
    ratio: float | None  # rho_k from the data; None when undefined
    from_data: bool  # False: support or data too thin, the prior's ratio was used


@dataclass(frozen=True)
class PropensityEstimate:
    """p(1..n) relative to rank 1, as used for weights (clipped), the unclipped estimate and
    its interval, and where each rank's value came from: "anchor" (rank 1), "data", "prior"."""

    propensity: np.ndarray
    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    source: tuple[str, ...]
    pairs: tuple[PairStats, ...]
    supported: bool
    config: PropensityConfig

    @property
    def ranks(self) -> int:
        return int(self.propensity.size)

    def at(self, position: int | None) -> float:
        """Clipped propensity of a 1-based rank; None (not shown) → 1; ranks past the curve
        continue it with the prior's decay."""
        if position is None:
            return 1.0
        if position <= self.ranks:
            return float(self.propensity[position - 1])
        eta = self.config.prior_eta
        tail = self.estimate[-1] * (self.ranks / position) ** eta
        return float(max(tail, self.config.clip))

    def as_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "supported": self.supported,
            "config": asdict(self.config),
            "ranks": [
                {
                    "rank": r + 1,
                    "propensity": num(self.propensity[r]),
                    "estimate": num(self.estimate[r]),
                    "lo": num(self.lo[r]),
                    "hi": num(self.hi[r]),
                    "source": self.source[r],
                }
                for r in range(self.ranks)
            ],
            "pairs": [asdict(p) for p in self.pairs],
        }


def estimate_propensities(
    tables: Mapping[int, np.ndarray], n_ranks: int, config: PropensityConfig
) -> PropensityEstimate:
    """The chained curve over ranks 1..max(n_ranks, deepest explored pair + 1)."""
    deepest = max(tables, default=0)
    n = max(1, n_ranks, deepest + 1)
    prior = prior_curve(n, config.prior_eta)
    rng = np.random.default_rng(config.seed)
    b = config.bootstrap
    estimate = np.ones(n)
    reps = np.ones((b, n))
    source = ["anchor"]
    pairs = []
    for k in range(1, n):  # rho_k takes rank k to rank k+1
        table = tables.get(k)
        ratio = float("nan")
        usable = False
        if table is not None:
            n_arm = table.sum(axis=(1, 2))
            ratio = pair_ratio(table)
            usable = bool(int(n_arm.sum()) >= config.min_pair_support and np.isfinite(ratio))
            rate_k_n = table[:, 1, :].sum()
            pairs.append(
                PairStats(
                    k=k,
                    searches=int(n_arm.sum()),
                    unswapped=int(n_arm[0]),
                    swapped=int(n_arm[1]),
                    engaged_k=int(rate_k_n),
                    engaged_next=int(table[:, :, 1].sum()),
                    ratio=ratio if np.isfinite(ratio) else None,
                    from_data=usable,
                )
            )
        if usable:
            estimate[k] = estimate[k - 1] * ratio
            reps[:, k] = reps[:, k - 1] * (bootstrap_ratios(table, b, rng) if b else 1.0)
            source.append("data")
        else:
            step = prior[k] / prior[k - 1]
            estimate[k] = estimate[k - 1] * step
            reps[:, k] = reps[:, k - 1] * step
            source.append("prior")
    if b:
        tail = (1.0 - config.level) / 2.0 * 100.0
        with np.errstate(all="ignore"):
            lo = np.nanpercentile(reps, tail, axis=0)
            hi = np.nanpercentile(reps, 100.0 - tail, axis=0)
    else:
        lo = hi = np.full(n, np.nan)
    supported = deepest >= 1 and all(source[k] == "data" for k in range(1, deepest + 1))
    return PropensityEstimate(
        propensity=np.maximum(estimate, config.clip),
        estimate=estimate,
        lo=lo,
        hi=hi,
        source=tuple(source),
        pairs=tuple(pairs),
        supported=supported,
        config=config,
    )


# ---------------------------------------------------------------------------------------------
# 5. Gains
# ---------------------------------------------------------------------------------------------


def plain_gain(engagements: Sequence[float]) -> float:
    """The engagement average over impressions, clipped to [0, 1]."""
    if not engagements:
        return 0.0
    return float(min(1.0, max(0.0, sum(engagements) / len(engagements))))


def debiased_gain(
    engagements: Sequence[float], propensities: Sequence[float], method: DebiasMethod = "ips"
) -> float:
    """ips: mean of e_i / p_i; ratio: sum e_i / sum p_i; clipped to [0, 1]. ``propensities``
    are already clipped from below (PropensityEstimate.at)."""
    if not engagements:
        return 0.0
    e = np.asarray(engagements, dtype=np.float64)
    p = np.asarray(propensities, dtype=np.float64)
    value = float(np.mean(e / p)) if method == "ips" else float(e.sum() / p.sum())
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------
# 6. From the logs
# ---------------------------------------------------------------------------------------------


def engaged_products(events: Iterable[tuple[str, str, str]]) -> dict[str, set[str]]:
    """search id → products with a click, add-to-cart or purchase event in it.
    events: (search id, product id, event type)."""
    out: dict[str, set[str]] = defaultdict(set)
    for sid, pid, etype in events:
        if str(etype) in ENGAGEMENTS:
            out[sid].add(pid)
    return dict(out)


def estimate_from_logs(
    searches: Sequence[tuple[str, Sequence[str], int | None, bool | None]],
    events: Iterable[tuple[str, str, str]],
    config: PropensityConfig,
) -> PropensityEstimate:
    """The curve from logged rows: searches (id, product ids as shown, explore_pair,
    explore_swapped) and events (search id, product id, type); ranks up to the longest
    result list logged."""
    tables = pair_tables(pair_observations(searches, engaged_products(events)))
    n_ranks = max((len(shown) for _, shown, _, _ in searches), default=1)
    return estimate_propensities(tables, n_ranks, config)


def estimate_from_session(session: Any, config: PropensityConfig) -> PropensityEstimate:
    """The curve from the search log in the database behind ``session``."""
    from service.repositories.interactions import logged_events, logged_searches

    searches = [
        (s.id, list(s.product_ids or []), s.explore_pair, s.explore_swapped)
        for s in logged_searches(session)
    ]
    events = [(e.search_id, e.product_id, e.type) for e in logged_events(session)]
    return estimate_from_logs(searches, events, config)
