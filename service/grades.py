"""Relevance grades from several sources, and the one rule that combines them.

A (query, product) grade comes from people — dataset raters (Chorus, ESCI, WANDS) or shoppers'
interactions — or from an *assessor* who completed the judged pool: products that retrieval
brings up but no person graded (``data/chorus_icecat/assessed/``, graded by its ``GUIDE.md``).
Why it matters: Chorus grades ~27 products per query out of ~20k, so a ranking that leaves the
graded pool looks worse only because its products are unknown (pool bias).

The rule (from the assessed pool's README):

* a human grade always wins; several human sources for one pair keep the highest gain;
* an assessed grade only fills a pair no human graded (several assessed: the highest);
* a pair with no grade at all is unknown: NDCG scores it as gain 0, and judged@k
  (``service.retrieval.metrics.judged_at_k``) reports how much of a ranking that was.

A source is *assessed* when it is named ``assessed`` or ``assessed:WHO`` — grades the project
adds itself carry their assessor's name after the colon and live in a file of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.domain import GradeSet

ASSESSED = "assessed"


def is_assessed(source: str) -> bool:
    return source == ASSESSED or source.startswith(ASSESSED + ":")


def admits(grades: GradeSet, source: str) -> bool:
    """Whether a grade from ``source`` counts under ``grades``."""
    return grades == GradeSet.completed or not is_assessed(source)


def merge_grades(
    rows: Iterable[tuple[str, str, float, str]], grades: GradeSet = GradeSet.completed
) -> dict[str, dict[str, float]]:
    """{query key: {product id: gain}} from (query key, product id, gain, source) rows."""
    human: dict[tuple[str, str], float] = {}
    assessed: dict[tuple[str, str], float] = {}
    for key, pid, gain, source in rows:
        if not admits(grades, source):
            continue
        tier = assessed if is_assessed(source) else human
        tier[(key, pid)] = max(gain, tier.get((key, pid), gain))
    out: dict[str, dict[str, float]] = {}
    for (key, pid), gain in (assessed | human).items():  # human overwrites assessed
        out.setdefault(key, {})[pid] = gain
    return out
