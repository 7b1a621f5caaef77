"""Team-draft interleaving: compare two rankers on live traffic, and the decision rule.

Notation:
    A, B        the two rankings of one search: A from the candidate policy's rewrite, B from
                what serves (the active adapter, or the raw query)
    I           the interleaved list shown (length ≤ k), teams[i] ∈ {"c", "b"} the side that
                contributed I[i]
    w_c, w_b    for one search, how many distinct shown products the shopper engaged with
                (any event but an impression) that team c / team b contributed
    o           the search's outcome: +1 if w_c > w_b, −1 if w_c < w_b, 0 if equal; searches
                without any engagement carry no information and are left out
    Δ           mean of o over the n searches with engagement: the candidate's preference

Team draft (Radlinski, Kurup & Joachims 2008): in each round the team that has contributed
fewer results picks next (a coin decides a tie), taking its highest-ranked result not yet
shown. Under a shopper who clicks at random, each team expects the same credit, so Δ is
centred on 0 when the rankers are equally good; the coin is what makes a position bias fall
on both teams equally.

Decision: Δ's 95 % interval is Δ ± z·s/√n (s the outcomes' standard deviation, normal
approximation); decided once n ≥ `min_searches`: `won` when the interval lies above 0, `lost`
when below. The comparison is looked at repeatedly as traffic arrives, which inflates the
error of a fixed-n interval; `confidence` defaults to 0.99 to pay for the peeking, and a
traffic budget (`max_searches`) and a deadline end it as `expired` (the candidate is not
promoted). Everything is recomputable from the search log: the shown list and its teams are
stored with each interleaved search, and events carry their position.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

from service.domain import ComparisonStatus

CANDIDATE, BASELINE = "c", "b"
T = TypeVar("T", bound=Hashable)


def team_draft(
    a: Sequence[T], b: Sequence[T], k: int, rng: random.Random
) -> tuple[list[T], list[str]]:
    """(shown, teams): the team-draft interleaving of candidate ranking `a` and baseline `b`."""
    shown: list[T] = []
    teams: list[str] = []
    taken: set[T] = set()
    picks = {CANDIDATE: 0, BASELINE: 0}
    source = {CANDIDATE: list(a), BASELINE: list(b)}
    cursor = {CANDIDATE: 0, BASELINE: 0}

    def next_of(team: str) -> T | None:
        items = source[team]
        while cursor[team] < len(items) and items[cursor[team]] in taken:
            cursor[team] += 1
        return items[cursor[team]] if cursor[team] < len(items) else None

    while len(shown) < k:
        left = {t: next_of(t) for t in (CANDIDATE, BASELINE)}
        if left[CANDIDATE] is None and left[BASELINE] is None:
            break
        if left[CANDIDATE] is None:
            team = BASELINE
        elif left[BASELINE] is None:
            team = CANDIDATE
        elif picks[CANDIDATE] != picks[BASELINE]:
            team = CANDIDATE if picks[CANDIDATE] < picks[BASELINE] else BASELINE
        else:
            team = CANDIDATE if rng.random() < 0.5 else BASELINE
        item = left[team]
        assert item is not None
        shown.append(item)
        teams.append(team)
        taken.add(item)
        picks[team] += 1
    return shown, teams


def outcome(teams: Sequence[str], engaged_positions: Iterable[int]) -> int | None:
    """+1 / −1 / 0 for one interleaved search, None when nothing shown was engaged with.
    `engaged_positions` are 1-based ranks (repeats count once)."""
    positions = {p for p in engaged_positions if 1 <= p <= len(teams)}
    if not positions:
        return None
    w_c = sum(teams[p - 1] == CANDIDATE for p in positions)
    w_b = len(positions) - w_c
    return (w_c > w_b) - (w_c < w_b)


@dataclass(frozen=True)
class Tally:
    interleaved: int  # searches shown interleaved
    searches: int  # n: those with engagement
    wins: int
    losses: int
    ties: int
    preference: float  # Δ
    low: float
    high: float

    def as_dict(self) -> dict[str, float | int]:
        return self.__dict__.copy()


def tally(outcomes: Sequence[int | None], confidence: float) -> Tally:
    informative = [o for o in outcomes if o is not None]
    n = len(informative)
    wins = sum(o > 0 for o in informative)
    losses = sum(o < 0 for o in informative)
    if n == 0:
        return Tally(len(outcomes), 0, 0, 0, 0, 0.0, -1.0, 1.0)
    mean = sum(informative) / n
    var = sum((o - mean) ** 2 for o in informative) / (n - 1) if n > 1 else 1.0
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(var / n)
    return Tally(len(outcomes), n, wins, losses, n - wins - losses, mean, mean - half, mean + half)


def decide(t: Tally, min_searches: int, max_searches: int, past_deadline: bool) -> ComparisonStatus:
    """The comparison's status after this tally (see module docstring)."""
    if t.searches >= min_searches:
        if t.low > 0:
            return ComparisonStatus.won
        if t.high < 0:
            return ComparisonStatus.lost
    if t.interleaved >= max_searches or past_deadline:
        return ComparisonStatus.expired
    return ComparisonStatus.running
