"""Fusing and judging the runs of bench/lexical.py: reciprocal rank fusion and score fusion of
ranked runs, bootstrap intervals, and the honest score of a selection (choose on one half of
the queries, score on the other, and back; repeated over salted splits)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from lexical_arms import DEPTH, Run

from service.retrieval.metrics import bootstrap_ci


def fold_of(query: str, salt: str = "") -> int:
    return int(hashlib.sha1(f"{salt}{query}".encode()).hexdigest(), 16) % 2


def rrf(arms: Sequence[tuple[Run, float]], k: float) -> Run:
    """Σ_arm w / (k + rank), rank 1-based over each arm's top-``DEPTH``."""
    n_q = len(arms[0][0].ids)
    ids, scores = [], []
    for qi in range(n_q):
        acc: dict[str, float] = defaultdict(float)
        for run, w in arms:
            for rank, pid in enumerate(run.ids[qi][:DEPTH], 1):
                acc[pid] += w / (k + rank)
        best = sorted(acc.items(), key=lambda x: (-x[1], x[0]))[:DEPTH]
        ids.append([p for p, _ in best])
        scores.append(np.asarray([s for _, s in best]))
    return Run(ids, scores)


def score_fusion(arms: Sequence[tuple[Run, float]]) -> Run:
    """Σ_arm w · minmax(score) over each arm's top-``DEPTH`` (missing = 0, constant arm = 1)."""
    n_q = len(arms[0][0].ids)
    ids, scores = [], []
    for qi in range(n_q):
        acc: dict[str, float] = defaultdict(float)
        for run, w in arms:
            s = run.scores[qi][:DEPTH]
            if s.size == 0:
                continue
            lo, hi = float(s.min()), float(s.max())
            norm = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
            for pid, v in zip(run.ids[qi][:DEPTH], norm, strict=True):
                acc[pid] += w * float(v)
        best = sorted(acc.items(), key=lambda x: (-x[1], x[0]))[:DEPTH]
        ids.append([p for p, _ in best])
        scores.append(np.asarray([s for _, s in best]))
    return Run(ids, scores)


# ---------------------------------------------------------------- evaluation


def ci_dict(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def two_fold(
    candidates: dict[str, np.ndarray], queries: list[str], salt: str = ""
) -> dict[str, Any]:
    """Choose the best candidate on one half of the queries, score it on the other, and back."""
    folds = np.asarray([fold_of(q, salt) for q in queries])
    out_of_fold = np.zeros(len(queries))
    halves = []
    for held in (0, 1):
        train, test = folds != held, folds == held
        chosen = max(candidates, key=lambda c: (candidates[c][train].mean(), c))
        out_of_fold[test] = candidates[chosen][test]
        halves.append(
            {
                "choose_on_queries": int(train.sum()),
                "chosen": chosen,
                "ndcg@10_on_choice_half": round(float(candidates[chosen][train].mean()), 4),
                "ndcg@10_on_held_out_half": round(float(candidates[chosen][test].mean()), 4),
            }
        )
    return {"halves": halves, "out_of_fold": out_of_fold}


def selection_report(
    candidates: dict[str, np.ndarray],
    queries: list[str],
    refs: dict[str, np.ndarray],
    splits: int,
) -> dict[str, Any]:
    """In-sample best, the primary 2-fold split and ``splits`` salted repeats of it."""
    best = max(candidates, key=lambda c: (candidates[c].mean(), c))
    primary = two_fold(candidates, queries)
    oof = primary["out_of_fold"]
    repeats = [two_fold(candidates, queries, salt=f"s{i}") for i in range(splits)]
    chosen_counts: dict[str, int] = defaultdict(int)
    for r in [primary, *repeats]:
        for h in r["halves"]:
            chosen_counts[h["chosen"]] += 1
    return {
        "candidates": len(candidates),
        "in_sample_best": best,
        "in_sample_best_ndcg@10": round(float(candidates[best].mean()), 4),
        "two_fold": {
            "halves": primary["halves"],
            "out_of_fold_ndcg@10": ci_dict(oof),
            **{f"out_of_fold_minus_{n}": ci_dict(oof - v) for n, v in refs.items()},
        },
        "repeated_two_fold": {
            "splits": splits,
            "mean_out_of_fold_ndcg@10": round(
                float(np.mean([r["out_of_fold"].mean() for r in repeats])), 4
            )
            if repeats
            else None,
            "min_max": [
                round(float(min(r["out_of_fold"].mean() for r in repeats)), 4),
                round(float(max(r["out_of_fold"].mean() for r in repeats)), 4),
            ]
            if repeats
            else None,
            "times_chosen": dict(sorted(chosen_counts.items(), key=lambda x: -x[1])),
        },
    }
