"""Relevance gains mined from shopper interactions.

For a (normalised query, product) pair, over every logged search of that query that showed the
product: engagement = the strongest event on it in that search (purchase > add-to-cart > click,
weights from settings; an impression alone is 0). The gain is the mean engagement over the
searches that showed it (a product bought by one shopper in ten scores 0.1, by all of them 1.0),
and a pair is labelled only once at least `min_support` distinct searches engaged with it. Labels
are stored with source `interactions`, beside the dataset judgments (which keep their source).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.records import LabelRecord
from service.repositories.labels import replace_labels
from service.repositories.searches import product_events, shown_products

SOURCE = "interactions"


@dataclass(frozen=True)
class EventWeights:
    click: float = 0.3
    add_to_cart: float = 0.6
    purchase: float = 1.0

    def of(self, event_type: str) -> float:
        return float(getattr(self, event_type, 0.0))


def mine_labels(session: Session, weights: EventWeights, min_support: int) -> list[LabelRecord]:
    shown: dict[tuple[str, str], int] = defaultdict(int)
    query_text: dict[str, str] = {}
    search_query: dict[str, str] = {}
    for sid, q, nq, pids in shown_products(session):
        search_query[sid] = nq
        query_text.setdefault(nq, q)
        for pid in set(pids or []):
            shown[(nq, pid)] += 1
    best: dict[tuple[str, str], float] = defaultdict(float)  # (search id, product) → weight
    for sid, pid, etype in product_events(session):
        key = (sid, pid)
        best[key] = max(best[key], weights.of(etype))
    engagement: dict[tuple[str, str], float] = defaultdict(float)
    support: dict[tuple[str, str], int] = defaultdict(int)
    for (sid, pid), w in best.items():
        nq = search_query.get(sid)
        if nq is None or w <= 0:
            continue
        engagement[(nq, pid)] += w
        support[(nq, pid)] += 1
    labels = []
    for (nq, pid), total in engagement.items():
        if support[(nq, pid)] < min_support:
            continue
        # A product engaged with although not among the results (e.g. found by browsing) still
        # counts once as shown.
        exposures = max(shown.get((nq, pid), 0), support[(nq, pid)])
        labels.append(LabelRecord(query_text[nq], pid, min(1.0, total / exposures), SOURCE))
    return labels


def refresh_interaction_labels(session: Session, weights: EventWeights, min_support: int) -> int:
    """Recompute every interaction label from the logs (replacing the previous ones)."""
    labels = mine_labels(session, weights, min_support)
    replace_labels(session, SOURCE, labels)
    return len(labels)
