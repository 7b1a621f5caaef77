"""The promotion gate: a candidate adapter must beat the better of the active policy and the raw
query, per query, with a paired bootstrap lower bound above the margin.

Inputs are per-query NDCG@10 on the same held-out queries, in the same order:

    candidate   greedy rewrites of the candidate adapter
    raw         the shopper's own words (no rewrite): the floor the product promises
    active      what serves now: an adapter's greedy rewrites, or None when serving is raw

The baseline is whichever of active and raw has the higher mean. The gate bootstraps the mean
of the paired differences d_q = candidate_q − baseline_q (queries resampled with replacement,
the same resample for both sides) and passes only when the lower end of the 95% interval is
above ``margin``. Comparing against the *better* of the two means a candidate can never be
promoted below raw, even when the active adapter is itself below raw (it would then be
replaced only by something that beats raw, while rollback to raw stays one call away).

``judged`` (optional, per arm: judged@10 per query) is reported beside each arm's NDCG, and the
decision says whether every arm's mean judged@10 reaches ``MIN_JUDGED``: below it an NDCG says
more about the graded pool than about the ranking. An unreliable gate still decides (refusing
would stall the loop on pools no one has completed), but says so on the run and the console.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.retrieval.metrics import MIN_JUDGED, bootstrap_ci


def _summary(values: np.ndarray, seed: int) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values.tolist(), seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi}


def gate_decision(
    candidate: Sequence[float],
    raw: Sequence[float],
    active: Sequence[float] | None,
    margin: float = 0.0,
    seed: int = 0,
    judged: dict[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Scores with 95% intervals, the paired difference to the baseline, and ``passed``."""
    cand = np.asarray(candidate, dtype=np.float64)
    raw_a = np.asarray(raw, dtype=np.float64)
    act = None if active is None else np.asarray(active, dtype=np.float64)
    if cand.shape != raw_a.shape or (act is not None and act.shape != cand.shape):
        raise ValueError("candidate, raw and active need one score per validation query")
    if cand.size == 0:
        raise ValueError("the gate needs at least one validation query")
    if act is not None and act.mean() > raw_a.mean():
        baseline_name, baseline = "active", act
    else:
        baseline_name, baseline = "raw", raw_a
    diff = _summary(cand - baseline, seed)
    out: dict[str, Any] = {
        "validation_queries": int(cand.size),
        "candidate": _summary(cand, seed),
        "raw": _summary(raw_a, seed),
        "active": None if act is None else _summary(act, seed),
        "baseline": baseline_name,
        "delta_vs_baseline": diff,
        "margin": margin,
        "passed": bool(diff["lo"] > margin),
    }
    # flat copies, for dashboards and the runs list
    out["candidate_ndcg@10"] = out["candidate"]["mean"]
    out["raw_query_ndcg@10"] = out["raw"]["mean"]
    out["active_ndcg@10"] = None if act is None else out["active"]["mean"]
    if judged:
        means = {arm: float(np.mean(v)) for arm, v in judged.items() if len(v)}
        for arm, mean in means.items():
            if out.get(arm) is not None:
                out[arm]["judged@10"] = mean
        out["judged@10"] = means
        out["reliable"] = all(m >= MIN_JUDGED for m in means.values())
    return out
