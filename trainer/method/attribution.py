"""Credit assignment for query rewrites: value coalitions of a rewrite's players, share credit.

OSPO ("Owen-Shapley Policy Optimization", arXiv 2601.08403) turns one scalar retrieval reward for a
rewrite into per-segment credit. A rewrite is cut into *players* (phrases, words or sentences; see
trainer/method/segmentation.py); a coalition S of players is the text made of just those segments;
v(S) is the retrieval quality of that text. Shapley / Owen values then say how much each segment
contributed.

Everything here is pure Python + numpy so it can run inside the reward workers and be tested
against brute force. Conventions used throughout:

* Players are ``0..n-1`` in text order. Internally coalitions are int bitmasks (bit i = player i);
  callers only ever see ``frozenset[int]``.
* The empty coalition is never sent to the value function: ``v(∅) = empty_value`` (default 0), so
  for the exact estimators and sampled Owen ``sum(phi) == v(N) - empty_value``.
* Value functions are *batched*: every estimator first collects all the coalitions it needs,
  deduplicates them and calls ``value_fn`` once, because for us one call is one embedder forward
  plus one FAISS search and per-coalition calls would be far slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from trainer.method.segmentation import (
    Segment,
    SegmentMode,
    UnionMode,
    coalition_text,
    segment,
    unions,
)

EstimatorName = Literal["auto", "shapley", "owen", "sampled_owen", "window"]

ValueFn = Callable[[Sequence[frozenset[int]]], np.ndarray]
TextValueFn = Callable[[list[str]], np.ndarray]
K = TypeVar("K")  # the context a text is valued in, e.g. the query whose targets score it
PairValueFn = Callable[[list[tuple[str, K]]], np.ndarray]

__all__ = [
    "Attribution",
    "TextAttribution",
    "attribute",
    "attribute_batch",
    "exact_owen",
    "exact_shapley",
    "owen_cost",
    "sampled_owen",
    "window_shapley",
]

# --------------------------------------------------------------------------------------------
# Coalition bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """Per-player credit ``phi``, how many distinct coalitions were valued, and ``v(N)``."""

    phi: np.ndarray
    n_evaluations: int
    full_value: float


def _mask_to_set(mask: int) -> frozenset[int]:
    players = []
    while mask:
        low = mask & -mask
        players.append(low.bit_length() - 1)
        mask ^= low
    return frozenset(players)


def _members_mask(players: Iterable[int]) -> int:
    mask = 0
    for p in players:
        mask |= 1 << p
    return mask


def _evaluate(masks: Iterable[int], value_fn: ValueFn, empty_value: float) -> dict[int, float]:
    """Value every distinct non-empty coalition in ONE ``value_fn`` call; ``v(∅) = empty_value``."""
    unique = [m for m in dict.fromkeys(masks) if m]
    table = {0: float(empty_value)}
    if unique:
        values = np.asarray(value_fn([_mask_to_set(m) for m in unique]), dtype=float)
        if values.shape != (len(unique),):
            raise ValueError(f"value_fn returned shape {values.shape} for {len(unique)} coalitions")
        table.update(zip(unique, values.tolist(), strict=True))
    return table


def _shapley_weights(n: int) -> np.ndarray:
    """w[s] = s!(n-s-1)!/n!: the chance that a player's predecessors are a given s-set."""
    return np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    )


def _popcounts(masks: np.ndarray) -> np.ndarray:
    return np.array([int(m).bit_count() for m in masks], dtype=np.int64)


def _check_partition(groups: Sequence[Sequence[int]]) -> int:
    """Validate that ``groups`` partitions ``range(n)`` into non-empty unions; return n."""
    flat = [p for g in groups for p in g]
    if any(len(g) == 0 for g in groups):
        raise ValueError("unions must be non-empty")
    if sorted(flat) != list(range(len(flat))):
        raise ValueError(f"unions must partition range(n), got {groups!r}")
    return len(flat)


def _empty_attribution(empty_value: float) -> Attribution:
    return Attribution(np.zeros(0), 0, float(empty_value))


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def exact_shapley(
    n: int, value_fn: ValueFn, max_players: int = 12, *, empty_value: float = 0.0
) -> Attribution:
    """Exact Shapley values from all 2^n coalitions, valued in one batch.

    phi_i = sum_{S ⊆ N\\{i}} |S|!(n-|S|-1)!/n! (v(S ∪ {i}) - v(S)).
    """
    if n > max_players:
        raise ValueError(
            f"exact Shapley needs 2^{n} coalitions; n={n} exceeds max_players={max_players} "
            "(use exact_owen/sampled_owen or raise max_players)"
        )
    if n <= 0:
        return _empty_attribution(empty_value)
    full = (1 << n) - 1
    table = _evaluate(range(1, full + 1), value_fn, empty_value)
    v = np.array([table[m] for m in range(full + 1)])
    masks = np.arange(full + 1, dtype=np.int64)
    weight_of = _shapley_weights(n)[np.minimum(_popcounts(masks), n - 1)]
    phi = np.empty(n)
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        phi[i] = np.dot(weight_of[without], v[without | (1 << i)] - v[without])
    return Attribution(phi, len(table) - 1, table[full])


def owen_cost(groups: Sequence[Sequence[int]]) -> int:
    """Upper bound on the coalitions exact Owen values: sum_k 2^(m-1) * 2^|U_k|."""
    m = len(groups)
    return sum((1 << (m - 1)) * (1 << len(g)) for g in groups) if m else 0


def _subset_masks(part_masks: Sequence[int]) -> list[int]:
    """Player masks of all 2^len subsets of ``part_masks`` (subset index bit j = part j)."""
    out = [0] * (1 << len(part_masks))
    for r in range(1, len(out)):
        low = r & -r
        out[r] = out[r ^ low] | part_masks[low.bit_length() - 1]
    return out


def exact_owen(
    groups: Sequence[Sequence[int]],
    value_fn: ValueFn,
    *,
    max_coalitions: int = 1 << 16,
    empty_value: float = 0.0,
) -> Attribution:
    """Exact two-level Owen value for the union structure ``groups`` (one batched call).

    The unions play a Shapley game among themselves (coalitions of whole unions R), and inside
    its own union U_k player i plays a Shapley game on top of R:

        phi_i = sum_{R ⊆ M\\{k}} sum_{T ⊆ U_k\\{i}} w_m(|R|) w_{u_k}(|T|)
                (v(∪R ∪ T ∪ {i}) - v(∪R ∪ T)),   w_a(s) = s!(a-s-1)!/a!.

    Needs about ``owen_cost(groups)`` coalitions instead of 2^n; a single union or all-singleton
    unions give back the Shapley value.
    """
    n = _check_partition(groups)
    if n == 0:
        return _empty_attribution(empty_value)
    cost = owen_cost(groups)
    if cost > max_coalitions:
        raise ValueError(f"exact Owen needs ~{cost} coalitions > max_coalitions={max_coalitions}")
    m = len(groups)
    union_masks = [_members_mask(g) for g in groups]
    r_masks = _subset_masks(union_masks)  # coalitions of whole unions
    r_sizes = _popcounts(np.arange(1 << m))
    w_m = _shapley_weights(m)

    # For each union: rows = R not containing k, cols = subsets T of U_k (local bit j = g[j]).
    plans = []
    for k, g in enumerate(groups):
        rows = [r for r in range(1 << m) if not (r >> k) & 1]
        inner = _subset_masks([1 << p for p in g])
        plans.append((rows, inner, [[r_masks[r] | t for t in inner] for r in rows]))
    table = _evaluate((c for *_, grid in plans for row in grid for c in row), value_fn, empty_value)

    phi = np.zeros(n)
    for (rows, inner, grid), g in zip(plans, groups, strict=True):
        values = np.array([[table[c] for c in row] for row in grid])  # (|rows|, 2^u)
        row_w = w_m[r_sizes[rows]]
        t_idx = np.arange(len(inner))
        t_w = _shapley_weights(len(g))[np.minimum(_popcounts(t_idx), len(g) - 1)]
        for j, player in enumerate(g):
            without = t_idx[(t_idx >> j) & 1 == 0]
            marginal = values[:, without | (1 << j)] - values[:, without]
            phi[player] = row_w @ marginal @ t_w[without]
    full = (1 << n) - 1
    return Attribution(phi, len(table) - 1, table[full])


def sampled_owen(
    groups: Sequence[Sequence[int]],
    value_fn: ValueFn,
    budget: int,
    rng: np.random.Generator,
    *,
    empty_value: float = 0.0,
) -> Attribution:
    """Unbiased Monte-Carlo Owen value by permutations that respect the union structure.

    A sample is a random order of the unions with an independent random order inside each
    union, concatenated. The Owen value is exactly the expected marginal contribution under
    this distribution, so the sample mean is unbiased. Each sample's marginals telescope to
    v(N) - v(∅), hence the estimate is exactly efficient for any number of samples.

    ``budget`` caps coalition evaluations: ``max(1, budget // n)`` samples of n non-empty
    prefixes each (v(∅) is never evaluated). Prefixes of all samples are deduplicated and valued
    in a single batch, so ``n_evaluations`` is often well below the budget.
    """
    n = _check_partition(groups)
    if budget < 1:
        raise ValueError("budget must be >= 1")
    if n == 0:
        return _empty_attribution(empty_value)
    n_samples = max(1, budget // n)
    arrays = [np.asarray(g, dtype=np.int64) for g in groups]
    perms = np.empty((n_samples, n), dtype=np.int64)
    prefixes: list[list[int]] = []
    for s in range(n_samples):
        order = np.concatenate([rng.permutation(arrays[k]) for k in rng.permutation(len(arrays))])
        perms[s] = order
        mask, row = 0, [0]
        for p in order.tolist():
            mask |= 1 << p
            row.append(mask)
        prefixes.append(row)
    table = _evaluate((c for row in prefixes for c in row), value_fn, empty_value)
    values = np.array([[table[c] for c in row] for row in prefixes])  # (samples, n + 1)
    phi = np.zeros(n)
    np.add.at(phi, perms, np.diff(values, axis=1))
    return Attribution(phi / n_samples, len(table) - 1, table[(1 << n) - 1])


def _window_masks(n: int, width: int, budget: int) -> list[int]:
    """Contiguous windows of <= ``width`` players chosen shortest-first, N always included.

    N costs one unit of the budget. Windows are admitted by length 1, 2, ... as long as the
    whole length level fits; a level that only partly fits takes starts evenly spread over the
    text (integer spacing), so no end of the rewrite is favoured.
    """
    full = (1 << n) - 1
    chosen = [full]
    for length in range(1, min(width, n) + 1):
        room = budget - len(chosen)
        if room <= 0:
            break
        starts = list(range(n - length + 1))
        if len(starts) > room:
            starts = (
                [starts[(len(starts) - 1) // 2]]
                if room == 1
                else [j * (len(starts) - 1) // (room - 1) for j in range(room)]
            )
        chosen.extend(((1 << length) - 1) << a for a in starts if ((1 << length) - 1) << a != full)
    return chosen


def window_shapley(
    n: int,
    value_fn: ValueFn,
    width: int = 8,
    budget: int = 96,
    *,
    empty_value: float = 0.0,
) -> Attribution:
    """Cheap Shapley approximation from contiguous windows of players (OSPO's released estimator).

    Coalitions are N plus contiguous spans ``[a, b)`` with ``b - a <= width``, at most ``budget``
    of them in total (see ``_window_masks`` for the shortest-first, evenly-spread choice rule),
    plus ∅ valued ``empty_value`` for free. For each player i, every pair (S, S ∪ {i}) with
    both coalitions evaluated contributes its marginal, weighted by the Shapley weight
    |S|!(n-|S|-1)!/n! renormalised over the pairs that are present.

    Exact on additive games (every marginal is the same), but *not efficient* in general:
    sum(phi) != v(N) - v(∅) once players interact, because most pairs of the Shapley sum are
    missing. A player with no observed pair (only if ``budget <= n``) gets phi = 0.
    """
    if width < 1 or budget < 1:
        raise ValueError("width and budget must be >= 1")
    if n <= 0:
        return _empty_attribution(empty_value)
    table = _evaluate(_window_masks(n, width, budget), value_fn, empty_value)
    log_w = [math.lgamma(s + 1) + math.lgamma(n - s) - math.lgamma(n + 1) for s in range(n)]
    pairs: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    for t_mask, t_value in table.items():
        size = t_mask.bit_count()
        for i in _mask_to_set(t_mask):
            s_mask = t_mask ^ (1 << i)
            if s_mask in table:
                pairs[i].append((log_w[size - 1], t_value - table[s_mask]))
    phi = np.zeros(n)
    for i, obs in enumerate(pairs):
        if obs:
            lw, marginal = np.array(obs).T
            w = np.exp(lw - lw.max())  # normalised in log space: raw weights underflow for big n
            phi[i] = np.dot(w, marginal) / w.sum()
    return Attribution(phi, len(table) - 1, table[(1 << n) - 1])


# --------------------------------------------------------------------------------------------
# Text-level convenience
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextAttribution:
    """Credit per segment of ``text``; ``n_evaluations`` counts distinct texts valued."""

    text: str
    segments: list[Segment]
    phi: np.ndarray
    n_evaluations: int
    full_value: float
    estimator: str
    groups: list[list[int]] = field(default_factory=list)


class _TextValueCache:
    """Coalition -> text -> value, so coalitions that render to the same text are valued once.

    A coalition whose text is empty (only whitespace segments) gets ``empty_value`` like ∅.
    """

    def __init__(
        self, segments: list[Segment], text: str, fn: TextValueFn, empty_value: float
    ) -> None:
        self.segments, self.text, self.fn, self.empty_value = segments, text, fn, empty_value
        self.cache: dict[str, float] = {}

    def __call__(self, coalitions: Sequence[frozenset[int]]) -> np.ndarray:
        texts = [coalition_text(self.text, self.segments, c) for c in coalitions]
        new = [t for t in dict.fromkeys(texts) if t and t not in self.cache]
        if new:
            values = np.asarray(self.fn(new), dtype=float)
            if values.shape != (len(new),):
                raise ValueError(f"value function returned shape {values.shape} for {len(new)}")
            self.cache.update(zip(new, values.tolist(), strict=True))
        return np.array([self.cache[t] if t else self.empty_value for t in texts])


def attribute(
    text: str,
    value_fn_on_texts: TextValueFn,
    *,
    segmentation: SegmentMode = "phrase",
    estimator: EstimatorName = "auto",
    max_exact_players: int = 10,
    union_mode: UnionMode = "sentence",
    block_size: int = 4,
    budget: int = 64,
    width: int = 8,
    rng: np.random.Generator | None = None,
    empty_value: float = 0.0,
) -> TextAttribution:
    """Segment ``text`` and attribute ``v(text)`` to its segments.

    ``estimator="auto"`` picks exact Shapley for n <= ``max_exact_players``; otherwise exact
    Owen over ``unions(..., union_mode)`` when ``owen_cost`` stays within the same envelope
    (2^max_exact_players coalitions); otherwise sampled Owen with ``budget`` evaluations.
    ``value_fn_on_texts`` is called once per batch with distinct, non-empty texts only.
    ``rng`` defaults to a fresh unseeded generator (only sampled Owen uses it).
    """
    segments = segment(text, segmentation)
    n = len(segments)
    if n == 0:
        return TextAttribution(text, [], np.zeros(0), 0, float(empty_value), "none")
    value_fn = _TextValueCache(segments, text, value_fn_on_texts, empty_value)
    groups = unions(segments, text, union_mode, block_size)
    if estimator == "auto":
        if n <= max_exact_players:
            estimator = "shapley"
        elif owen_cost(groups) <= 1 << max_exact_players:
            estimator = "owen"
        else:
            estimator = "sampled_owen"

    if estimator == "shapley":
        result = exact_shapley(n, value_fn, max(max_exact_players, 12), empty_value=empty_value)
    elif estimator == "owen":
        result = exact_owen(groups, value_fn, empty_value=empty_value)
    elif estimator == "sampled_owen":
        generator = rng if rng is not None else np.random.default_rng()
        result = sampled_owen(groups, value_fn, budget, generator, empty_value=empty_value)
    elif estimator == "window":
        result = window_shapley(n, value_fn, width, budget, empty_value=empty_value)
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    return TextAttribution(
        text=text,
        segments=segments,
        phi=result.phi,
        n_evaluations=len(value_fn.cache),
        full_value=result.full_value,
        estimator=estimator,
        groups=groups,
    )


def attribute_batch(
    items: Sequence[tuple[str, K]],
    value_fn: PairValueFn[K],
    *,
    rng: np.random.Generator | None = None,
    seeds: Sequence[int] | None = None,
    **kwargs: object,
) -> list[TextAttribution]:
    """``attribute`` for many texts at once, valuing every coalition of every text in ONE call.

    items:    (text, context) pairs; ``context`` is whatever the value depends on besides the
              text (for rewards: the query key whose targets score it). It must be hashable.
    value_fn: called once with the distinct, non-empty (coalition text, context) pairs of all
              items; returns their values, shape (len(pairs),).
    rng:      seeds one generator per item (only sampled Owen draws from it); None = unseeded.
    seeds:    explicit per-item seeds instead of ``rng`` (to replay the same draws elsewhere).
    kwargs:   passed to ``attribute`` (segmentation, estimator, budget, width, ...).

    Two passes over ``attribute``: the first records which coalition texts each item's
    estimator asks for (answering zeros: no estimator chooses its coalitions by their values),
    then all distinct pairs are valued together, and the second pass replays each estimator
    against that table. Each item's generator is re-created from the same seed for the replay,
    so both passes draw the same permutations. Results equal per-item ``attribute`` calls with
    generators ``default_rng(seed_i)``.
    """
    if "rng" in kwargs:
        raise TypeError("pass rng to attribute_batch, not through kwargs")
    if seeds is None:
        parent = rng if rng is not None else np.random.default_rng()
        seeds = parent.integers(0, 2**63 - 1, size=len(items)).tolist()
    elif len(seeds) != len(items):
        raise ValueError(f"{len(seeds)} seeds for {len(items)} items")

    requested: dict[tuple[str, K], None] = {}  # ordered set of (text, context)

    def recorder(context: K) -> TextValueFn:
        def record(texts: list[str]) -> np.ndarray:
            requested.update(dict.fromkeys((t, context) for t in texts))
            return np.zeros(len(texts))

        return record

    for (text, context), seed in zip(items, seeds, strict=True):
        attribute(text, recorder(context), rng=np.random.default_rng(seed), **kwargs)  # type: ignore[arg-type]

    pairs = list(requested)
    values = np.asarray(value_fn(pairs), dtype=float) if pairs else np.zeros(0)
    if values.shape != (len(pairs),):
        raise ValueError(f"value_fn returned shape {values.shape} for {len(pairs)} pairs")
    table = dict(zip(pairs, values.tolist(), strict=True))

    def replay(context: K) -> TextValueFn:
        def lookup(texts: list[str]) -> np.ndarray:
            try:
                return np.array([table[(t, context)] for t in texts])
            except KeyError as e:  # an estimator chose coalitions by value: not replayable
                raise RuntimeError(
                    f"coalition {e.args[0]!r} was not requested when recording"
                ) from e

        return lookup

    return [
        attribute(text, replay(context), rng=np.random.default_rng(seed), **kwargs)  # type: ignore[arg-type]
        for (text, context), seed in zip(items, seeds, strict=True)
    ]
