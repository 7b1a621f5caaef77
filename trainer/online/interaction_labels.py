"""Relevance gains mined from shopper interactions.

For a (normalised query, product) pair, every logged search of that query that showed the
product is one impression, at the rank it was shown (an engaged product the search did not show,
e.g. found by browsing, is one impression too, with no rank). Its engagement e = the strongest
event on it in that search (purchase > add-to-cart > click, weights from settings; an
impression alone is 0). Two gains:

* plain:    the mean engagement over the impressions (a product bought by one shopper in ten
            scores 0.1, by all of them 1.0). Biased towards whatever the current ranking put
            at the top: a result at rank 8 is seen by few shoppers, so it is engaged with
            rarely however good it is.
* debiased: each impression's engagement weighted by the inverse examination propensity of its
            rank, estimated from the searches serving randomised (trainer/online/propensity.py,
            which documents the estimator, the clip and the minimum support); clipped to [0, 1].

Which one (``estimator``, OSPO_LABEL_ESTIMATOR): "plain", "debiased", or "auto" (default):
debiased once the logs hold enough exploration — every explored pair of ranks has its minimum
support, so the propensities rest on data rather than on the prior — and plain until then.
A pair is labelled only once at least `min_support` distinct searches engaged with it, whatever
the estimator. Labels are stored with source `interactions`, beside the dataset judgments
(which keep their source).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm import Session

from service.normalize import normalize_query
from service.records import LabelRecord
from service.repositories.interactions import logged_events, logged_searches
from service.repositories.labels import replace_labels
from trainer.online.propensity import (
    PropensityConfig,
    PropensityEstimate,
    debiased_gain,
    estimate_from_logs,
    plain_gain,
)

SOURCE = "interactions"
LabelEstimator = Literal["auto", "plain", "debiased"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventWeights:
    click: float = 0.3
    add_to_cart: float = 0.6
    purchase: float = 1.0

    def of(self, event_type: str) -> float:
        return float(getattr(self, event_type, 0.0))


@dataclass(frozen=True)
class Impression:
    position: int | None  # 1-based rank as shown; None: engaged but not among the results
    engagement: float


@dataclass(frozen=True)
class MinedLabels:
    labels: list[LabelRecord]
    estimator: Literal["plain", "debiased"]  # what "auto" resolved to
    propensity: PropensityEstimate | None  # None with estimator "plain" asked for


def _collect(
    session: Session, weights: EventWeights
) -> tuple[
    dict[tuple[str, str], list[Impression]],
    dict[str, str],
    list[tuple[str, list[str], int | None, bool | None]],
    list[tuple[str, str, str]],
]:
    searches = logged_searches(session)
    events = [(e.search_id, e.product_id, str(e.type)) for e in logged_events(session)]
    best: dict[tuple[str, str], float] = defaultdict(float)  # (search id, product) → weight
    for sid, pid, etype in events:
        best[(sid, pid)] = max(best[(sid, pid)], weights.of(etype))
    by_search: dict[str, list[str]] = defaultdict(list)  # search id → engaged products
    for (sid, pid), w in best.items():
        if w > 0:
            by_search[sid].append(pid)
    seen: dict[tuple[str, str], list[Impression]] = defaultdict(list)
    query_text: dict[str, str] = {}
    rows = []
    for s in searches:
        shown = list(s.product_ids or [])
        rows.append((s.id, shown, s.explore_pair, s.explore_swapped))
        query_text.setdefault(s.normalized_query, s.query)
        rank: dict[str, int] = {}
        for i, pid in enumerate(shown):
            rank.setdefault(pid, i + 1)
        for pid, r in rank.items():
            seen[(s.normalized_query, pid)].append(Impression(r, best.get((s.id, pid), 0.0)))
        for pid in by_search.get(s.id, []):
            if pid not in rank:
                seen[(s.normalized_query, pid)].append(Impression(None, best[(s.id, pid)]))
    return seen, query_text, rows, events


def mine(
    session: Session,
    weights: EventWeights,
    min_support: int,
    estimator: LabelEstimator = "auto",
    propensity: PropensityConfig | None = None,
) -> MinedLabels:
    """Labels of every (query, product) with at least ``min_support`` engaged searches."""
    if estimator not in ("auto", "plain", "debiased"):
        raise ValueError(f"estimator must be auto, plain or debiased, got {estimator!r}")
    seen, query_text, rows, events = _collect(session, weights)
    estimate = None
    if estimator != "plain":
        estimate = estimate_from_logs(rows, events, propensity or PropensityConfig())
    use = "debiased" if estimate is not None and (
        estimator == "debiased" or estimate.supported
    ) else "plain"  # fmt: skip
    labels = []
    for (nq, pid), imps in seen.items():
        engaged = [i for i in imps if i.engagement > 0]
        if len(engaged) < min_support:
            continue
        e = [i.engagement for i in imps]
        if use == "debiased":
            assert estimate is not None
            gain = debiased_gain(e, [estimate.at(i.position) for i in imps], estimate.config.method)
        else:
            gain = plain_gain(e)
        labels.append(LabelRecord(query_text[nq], pid, gain, SOURCE))
    return MinedLabels(labels, use, estimate)  # type: ignore[arg-type]


def mine_labels(
    session: Session,
    weights: EventWeights,
    min_support: int,
    estimator: LabelEstimator = "auto",
    propensity: PropensityConfig | None = None,
) -> list[LabelRecord]:
    return mine(session, weights, min_support, estimator, propensity).labels


def refresh_interaction_labels(
    session: Session,
    weights: EventWeights,
    min_support: int,
    estimator: LabelEstimator = "auto",
    propensity: PropensityConfig | None = None,
) -> int:
    """Recompute every interaction label from the logs (replacing the previous ones)."""
    mined = mine(session, weights, min_support, estimator, propensity)
    log.info(
        "interaction labels: %d (%s gains%s)",
        len(mined.labels),
        mined.estimator,
        "" if mined.propensity is None else f", propensity supported={mined.propensity.supported}",
    )
    replace_labels(session, SOURCE, mined.labels)
    return len(mined.labels)


def label_quality(
    labels: list[LabelRecord], hidden: Mapping[tuple[str, str], float]
) -> dict[str, Any]:
    """Spearman rank correlation of label gains with hidden judgments {(normalised query,
    product): gain}, over the labelled pairs that are judged (unjudged pairs are left out)."""
    from scipy.stats import spearmanr

    pairs = [
        (lab.gain, hidden[key])
        for lab in labels
        if (key := (normalize_query(lab.query), lab.product_id)) in hidden
    ]
    if len(pairs) < 3:
        return {"pairs": len(pairs), "spearman": None}
    mined, judged = zip(*pairs, strict=True)
    rho = float(spearmanr(mined, judged).statistic)
    return {"pairs": len(pairs), "spearman": rho if rho == rho else None}
