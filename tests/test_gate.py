"""The promotion gate: paired bootstrap against the better of the active policy and raw."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.online.gate import gate_decision

RNG = np.random.default_rng(0)
RAW = RNG.uniform(0.3, 0.9, size=40)


def test_candidate_below_raw_is_rejected_even_when_above_active() -> None:
    active = RAW - 0.10  # a bad adapter is serving
    candidate = RAW - 0.02  # better than active, still below raw
    gate = gate_decision(candidate, RAW, active)
    assert gate["baseline"] == "raw"
    assert not gate["passed"]
    assert gate["delta_vs_baseline"]["hi"] < 0
    assert gate["active_ndcg@10"] < gate["candidate_ndcg@10"] < gate["raw_query_ndcg@10"]


def test_candidate_clearly_above_both_is_promoted() -> None:
    candidate = RAW + RNG.uniform(0.02, 0.08, size=RAW.size)
    gate = gate_decision(candidate, RAW, RAW + 0.01)
    assert gate["baseline"] == "active"
    assert gate["passed"] and gate["delta_vs_baseline"]["lo"] > 0


def test_noise_around_raw_is_not_a_win() -> None:
    candidate = RAW + RNG.normal(0, 0.05, size=RAW.size)  # no real lift, only noise
    gate = gate_decision(candidate - (candidate - RAW).mean() + 0.001, RAW, None)
    assert gate["baseline"] == "raw" and gate["active"] is None
    assert not gate["passed"]  # the mean is above raw, the interval is not


def test_margin_is_a_floor_on_the_lower_bound() -> None:
    candidate = RAW + 0.03
    assert gate_decision(candidate, RAW, None, margin=0.0)["passed"]
    assert not gate_decision(candidate, RAW, None, margin=0.05)["passed"]


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        gate_decision(RAW[:3], RAW, None)
    with pytest.raises(ValueError):
        gate_decision([], [], None)
