"""Tests for trainer.method.attribution against brute-force definitions of Shapley and Owen
values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.method.attribution import (
    attribute,
    exact_owen,
    exact_shapley,
    owen_cost,
    sampled_owen,
    window_shapley,
)

Game = Callable[[frozenset[int]], float]


# ------------------------------------------------------------------------------------------
# Helpers: games, counting value functions and brute-force references
# ------------------------------------------------------------------------------------------


def random_game(n: int, seed: int) -> dict[frozenset[int], float]:
    """Arbitrary set function with v(∅) = 0, one value per coalition."""
    rng = np.random.default_rng(seed)
    table = {
        frozenset(c): float(rng.normal())
        for size in range(1, n + 1)
        for c in itertools.combinations(range(n), size)
    }
    table[frozenset()] = 0.0
    return table


class Counting:
    """Batched value function over a game that records every call."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.calls: list[list[frozenset[int]]] = []

    def __call__(self, coalitions: Sequence[frozenset[int]]) -> np.ndarray:
        self.calls.append(list(coalitions))
        return np.array([self.game(c) for c in coalitions])


def batched(game: Game) -> Callable[[Sequence[frozenset[int]]], np.ndarray]:
    return lambda cs: np.array([game(c) for c in cs])


def permutation_average(n: int, game: Game, perms: list[tuple[int, ...]]) -> np.ndarray:
    """Average marginal contribution over the given orders (the definition of both values)."""
    phi = np.zeros(n)
    for order in perms:
        prefix: frozenset[int] = frozenset()
        for p in order:
            phi[p] += game(prefix | {p}) - game(prefix)
            prefix = prefix | {p}
    return phi / len(perms)


def brute_shapley(n: int, game: Game) -> np.ndarray:
    return permutation_average(n, game, list(itertools.permutations(range(n))))


def brute_owen(groups: list[list[int]], game: Game) -> np.ndarray:
    """Owen value = average over all orders in which every union appears contiguously."""
    n = sum(len(g) for g in groups)

    def consistent(order: tuple[int, ...]) -> bool:
        pos = {p: k for k, p in enumerate(order)}
        return all(max(pos[p] for p in g) - min(pos[p] for p in g) == len(g) - 1 for g in groups)

    return permutation_average(
        n, game, [o for o in itertools.permutations(range(n)) if consistent(o)]
    )


def partition_from_labels(labels: list[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for player, label in enumerate(labels):
        groups.setdefault(label, []).append(player)
    return list(groups.values())


@st.composite
def games(draw: st.DrawFn, max_n: int = 6) -> tuple[int, dict[frozenset[int], float]]:
    n = draw(st.integers(1, max_n))
    return n, random_game(n, draw(st.integers(0, 2**32 - 1)))


@st.composite
def owen_games(
    draw: st.DrawFn, max_n: int = 6
) -> tuple[list[list[int]], dict[frozenset[int], float]]:
    n, table = draw(games(max_n))
    labels = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    return partition_from_labels(labels), table


FAST = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------------------
# Exact estimators against brute force
# ------------------------------------------------------------------------------------------


@FAST
@given(game=games())
def test_exact_shapley_matches_permutations(game: tuple[int, dict]) -> None:
    n, table = game
    value_fn = Counting(table.__getitem__)
    result = exact_shapley(n, value_fn)
    np.testing.assert_allclose(result.phi, brute_shapley(n, table.__getitem__), atol=1e-9)
    assert math.isclose(result.phi.sum(), table[frozenset(range(n))], abs_tol=1e-9)
    assert result.full_value == table[frozenset(range(n))]
    # one batched call, no ∅, no duplicates
    assert len(value_fn.calls) == 1
    batch = value_fn.calls[0]
    assert frozenset() not in batch and len(set(batch)) == len(batch) == result.n_evaluations
    assert result.n_evaluations == 2**n - 1


@FAST
@given(game=owen_games())
def test_exact_owen_matches_consistent_permutations(game: tuple[list[list[int]], dict]) -> None:
    groups, table = game
    n = sum(map(len, groups))
    value_fn = Counting(table.__getitem__)
    result = exact_owen(groups, value_fn)
    np.testing.assert_allclose(result.phi, brute_owen(groups, table.__getitem__), atol=1e-9)
    assert math.isclose(result.phi.sum(), table[frozenset(range(n))], abs_tol=1e-9)
    assert len(value_fn.calls) == 1
    batch = value_fn.calls[0]
    assert frozenset() not in batch and len(set(batch)) == len(batch) == result.n_evaluations
    assert result.n_evaluations <= owen_cost(groups)


@FAST
@given(game=games())
def test_owen_degenerates_to_shapley(game: tuple[int, dict]) -> None:
    n, table = game
    shapley = exact_shapley(n, batched(table.__getitem__)).phi
    one_union = exact_owen([list(range(n))], batched(table.__getitem__)).phi
    singletons = exact_owen([[i] for i in range(n)], batched(table.__getitem__)).phi
    np.testing.assert_allclose(one_union, shapley, atol=1e-9)
    np.testing.assert_allclose(singletons, shapley, atol=1e-9)


def test_exact_shapley_refuses_too_many_players() -> None:
    with pytest.raises(ValueError, match="max_players"):
        exact_shapley(13, batched(lambda c: 0.0))
    with pytest.raises(ValueError, match="partition"):
        exact_owen([[0, 1], [1]], batched(lambda c: 0.0))


def test_empty_value_convention() -> None:
    table = random_game(3, 0)
    shifted = exact_shapley(3, batched(table.__getitem__), empty_value=0.5)
    assert math.isclose(shifted.phi.sum(), table[frozenset(range(3))] - 0.5)
    assert exact_shapley(0, batched(lambda c: 1 / 0)).phi.shape == (0,)


# ------------------------------------------------------------------------------------------
# Axioms on random games, for every efficient estimator
# ------------------------------------------------------------------------------------------


def estimators(groups: list[list[int]]) -> dict[str, Callable[[Game], np.ndarray]]:
    n = sum(map(len, groups))
    return {
        "shapley": lambda g: exact_shapley(n, batched(g)).phi,
        "owen": lambda g: exact_owen(groups, batched(g)).phi,
        # same seed => same permutations, so additivity holds exactly for the sampler too
        "sampled": lambda g: sampled_owen(groups, batched(g), 40, np.random.default_rng(7)).phi,
    }


@FAST
@given(game=owen_games())
def test_efficiency_and_additivity(game: tuple[list[list[int]], dict]) -> None:
    groups, table = game
    n = sum(map(len, groups))
    other = random_game(n, seed=len(table) + 1)
    for name, phi_of in estimators(groups).items():
        phi_v, phi_w = phi_of(table.__getitem__), phi_of(other.__getitem__)
        assert math.isclose(phi_v.sum(), table[frozenset(range(n))], abs_tol=1e-9), name
        phi_sum = phi_of(lambda c: table[c] + other[c])
        np.testing.assert_allclose(phi_sum, phi_v + phi_w, atol=1e-9, err_msg=name)


@FAST
@given(game=owen_games(max_n=5), data=st.data())
def test_null_player(game: tuple[list[list[int]], dict], data: st.DataObject) -> None:
    """A player whose presence never changes the value gets exactly zero credit."""
    groups, table = game
    n = sum(map(len, groups))
    null = data.draw(st.integers(0, n - 1))
    value = lambda c: table[c - {null}]  # noqa: E731
    for name, phi_of in estimators(groups).items():
        assert abs(phi_of(value)[null]) < 1e-12, name


@FAST
@given(n_seed=st.tuples(st.integers(2, 6), st.integers(0, 2**32 - 1)), data=st.data())
def test_symmetry(n_seed: tuple[int, int], data: st.DataObject) -> None:
    """Players i, j that are interchangeable in v (and in the union structure) get equal value."""
    n, seed = n_seed
    i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    base = random_game(n, seed)
    swap = {i: j, j: i}

    def symmetric(c: frozenset[int]) -> float:
        return base[c] + base[frozenset(swap.get(p, p) for p in c)]

    np.testing.assert_allclose(*exact_shapley(n, batched(symmetric)).phi[[i, j]], atol=1e-9)
    # i and j share a union; everybody else is a singleton union
    groups = [[i, j]] + [[p] for p in range(n) if p not in (i, j)]
    np.testing.assert_allclose(*exact_owen(groups, batched(symmetric)).phi[[i, j]], atol=1e-9)
    # or both are singleton unions
    groups = [[p] for p in range(n)]
    np.testing.assert_allclose(*exact_owen(groups, batched(symmetric)).phi[[i, j]], atol=1e-9)


# ------------------------------------------------------------------------------------------
# Sampled Owen: one batch, unbiased, convergent
# ------------------------------------------------------------------------------------------


def test_sampled_owen_one_batch_and_budget() -> None:
    table = random_game(6, 3)
    value_fn = Counting(table.__getitem__)
    result = sampled_owen([[0, 1, 2], [3, 4], [5]], value_fn, 30, np.random.default_rng(0))
    assert len(value_fn.calls) == 1
    batch = value_fn.calls[0]
    assert frozenset() not in batch and len(set(batch)) == len(batch) == result.n_evaluations
    assert result.n_evaluations <= 30
    assert frozenset(range(6)) in batch and result.full_value == table[frozenset(range(6))]


def test_sampled_owen_converges() -> None:
    groups = [[0, 2], [1, 3, 4], [5]]
    table = random_game(6, 11)
    exact = exact_owen(groups, batched(table.__getitem__)).phi
    estimate = sampled_owen(
        groups, batched(table.__getitem__), 6 * 20_000, np.random.default_rng(1)
    )
    np.testing.assert_allclose(estimate.phi, exact, atol=0.03)


def test_sampled_owen_unbiased_at_tiny_budget() -> None:
    """Averaging many one-sample estimates recovers the exact value (within 5 standard errors)."""
    groups = [[0, 1], [2, 3, 4]]
    table = random_game(5, 5)
    exact = exact_owen(groups, batched(table.__getitem__)).phi
    rng = np.random.default_rng(2)
    runs = np.array(
        [sampled_owen(groups, batched(table.__getitem__), 5, rng).phi for _ in range(3000)]
    )
    stderr = runs.std(axis=0) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(axis=0) - exact) <= 5 * stderr + 1e-9)


# ------------------------------------------------------------------------------------------
# Window estimator
# ------------------------------------------------------------------------------------------


@FAST
@given(
    weights=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=12),
    width=st.integers(1, 8),
)
def test_window_exact_on_additive_games(weights: list[float], width: int) -> None:
    n = len(weights)
    value_fn = Counting(lambda c: sum(weights[i] for i in c))
    result = window_shapley(n, value_fn, width=width, budget=n + 1 + n // 2)
    np.testing.assert_allclose(result.phi, weights, atol=1e-9)
    assert len(value_fn.calls) == 1
    assert result.n_evaluations == len(value_fn.calls[0]) <= n + 1 + n // 2


def test_window_is_not_efficient() -> None:
    """v(S) = |S|^2 on 3 players: {0, 2} is not a window, so credit is 3, 2, 3 (sum 8 != 9)."""
    result = window_shapley(3, batched(lambda c: len(c) ** 2), width=8, budget=96)
    np.testing.assert_allclose(result.phi, [3.0, 2.0, 3.0])
    assert result.full_value == 9.0 and result.n_evaluations == 6


def test_window_choice_rule_shortest_first_evenly_spread() -> None:
    value_fn = Counting(lambda c: float(len(c)))
    window_shapley(10, value_fn, width=4, budget=1 + 10 + 3)
    batch = value_fn.calls[0]
    assert batch[0] == frozenset(range(10))  # N always evaluated
    assert all(len(c) == 1 for c in batch[1:11])  # all singletons next
    assert batch[11:] == [frozenset({0, 1}), frozenset({4, 5}), frozenset({8, 9})]


# ------------------------------------------------------------------------------------------
# Text-level convenience
# ------------------------------------------------------------------------------------------

KEYWORDS = {"red": 1.0, "shoes": 2.0, "women": 0.5, "waterproof": 1.5}


class CountingTexts:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        # a non-additive score: keyword mass, with a bonus when "red" and "shoes" co-occur
        return np.array(
            [
                sum(KEYWORDS.get(w.strip(",.").lower(), 0.0) for w in t.split())
                + (1.0 if "red" in t and "shoes" in t else 0.0)
                for t in texts
            ]
        )


def test_attribute_auto_uses_exact_shapley_with_one_call() -> None:
    text = "red running shoes for women, waterproof"
    fn = CountingTexts()
    result = attribute(text, fn)
    assert result.estimator == "shapley"
    assert len(fn.calls) == 1
    assert all(t for t in fn.calls[0]) and len(set(fn.calls[0])) == len(fn.calls[0])
    assert result.n_evaluations == len(fn.calls[0])
    assert math.isclose(result.phi.sum(), result.full_value)
    assert math.isclose(result.full_value, float(fn([text])[0]))
    assert [s.text for s in result.segments] == ["red running shoes ", "for women, ", "waterproof"]


def test_attribute_dedupes_identical_texts() -> None:
    fn = CountingTexts()
    result = attribute("shoes shoes shoes", fn, segmentation="word")
    assert fn.calls == [["shoes", "shoes shoes", "shoes shoes shoes"]]
    assert result.n_evaluations == 3
    np.testing.assert_allclose(result.phi, [2.0, 2.0, 2.0])


def test_attribute_auto_falls_back_to_owen_then_sampling() -> None:
    sentences = "red shoes. women boots. waterproof hat. blue socks. green scarf. warm gloves."
    fn = CountingTexts()
    owen = attribute(sentences, fn, segmentation="word", max_exact_players=10)
    assert owen.estimator == "owen" and len(owen.segments) == 12 and len(fn.calls) == 1
    assert math.isclose(owen.phi.sum(), owen.full_value)

    long_text = " ".join(["red shoes waterproof women"] * 5)
    rng = np.random.default_rng(0)
    sampled = attribute(long_text, CountingTexts(), segmentation="word", rng=rng, budget=64)
    assert sampled.estimator == "sampled_owen"
    assert math.isclose(sampled.phi.sum(), sampled.full_value)

    window = attribute(
        long_text, CountingTexts(), segmentation="word", estimator="window", budget=40
    )
    assert window.estimator == "window" and window.n_evaluations <= 40

    assert attribute("", CountingTexts()).phi.shape == (0,)
