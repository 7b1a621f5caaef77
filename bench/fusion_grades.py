"""Hybrid fusion weights under completed grades → bench/results/fusion_grades.json + PNG.

The fusion weights (RRF k = 60, dense 1, lexical 2; service/retrieval/fusion.py) were chosen by
bench/lexical.py on the human Chorus grades alone, whose judged pools favour what lexical
retrieval finds. This benchmark scores the raw queries of the serving index (`ospo bootstrap`)
with dense, lexical and hybrid retrieval at several arm weights, under human + assessed grades
(judged@10 beside every figure) and under human grades alone, on the split the product uses
(30% validation, seed 0). A weight is chosen on each side of the split and scored on the other,
so the chosen setting's figure is out of fold. Deltas are paired per query against today's
weights, with 95% bootstrap intervals.

    .venv/bin/python bench/fusion_grades.py        # ~2 min: one embedding of 114 queries
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from harness.results import header, loadavg, pyplot, save_figure, write_json  # noqa: E402

from service.domain import GradeSet  # noqa: E402
from service.retrieval.fusion import fuse  # noqa: E402
from service.retrieval.metrics import bootstrap_ci, judged_at_k, ndcg_at_k  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.training.data import load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.training.resources import load_retriever  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
OUT = ROOT / "bench" / "results" / "fusion_grades.json"
TODAY = (1.0, 2.0)  # (dense, lexical) weights serving uses
WEIGHTS = [(1.0, 0.0), (0.0, 1.0), (1.0, 2.0), (1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (3.0, 1.0)]


def label(w: tuple[float, float]) -> str:
    if w == (1.0, 0.0):
        return "dense only"
    if w == (0.0, 1.0):
        return "lexical only"
    return f"hybrid d{w[0]:g}:l{w[1]:g}" + (" (today)" if w == TODAY else "")


def ci(values: np.ndarray) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values.tolist(), seed=0)
    return {"mean": mean, "lo": lo, "hi": hi}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    retriever = load_retriever(get_settings())
    fusion = retriever.fusion
    depth = max(10, fusion.depth)
    grades = {
        g: restrict_to_index(load_examples(str(CHORUS), grades=g), retriever.row_of)
        for g in GradeSet
    }
    examples = grades[GradeSet.completed]
    human = {ex.key: ex.targets for ex in grades[GradeSet.human]}
    train, val = split_examples(examples, 0.3, 0)
    sides = {"train": {ex.key for ex in train}, "val": {ex.key for ex in val}}
    texts = [ex.query for ex in examples]
    # each arm once, at the fusion depth; every weighting fuses the same two lists
    dense = retriever.rank(texts, depth, "dense")
    lexical = retriever.rank(texts, depth, "lexical")
    ids = retriever.ids
    per: dict[str, dict[str, np.ndarray]] = {}
    for w in WEIGHTS:
        cfg = dataclasses.replace(fusion, dense_weight=w[0], lexical_weight=w[1])
        scores: dict[str, list[float]] = {"ndcg": [], "judged": [], "human": [], "hjudged": []}
        for ex, d, lx in zip(examples, dense, lexical, strict=True):
            rows, _ = fuse(((d.rows, d.scores), (lx.rows, lx.scores)), w, cfg, 10)
            ranked = [ids[r] for r in rows[:10]]
            h = human.get(ex.key, {})
            scores["ndcg"].append(ndcg_at_k(ranked, ex.targets, 10))
            scores["judged"].append(judged_at_k(ranked, ex.targets, 10))
            scores["human"].append(ndcg_at_k(ranked, h, 10) if h else np.nan)
            scores["hjudged"].append(judged_at_k(ranked, h, 10) if h else np.nan)
        per[label(w)] = {k: np.array(v) for k, v in scores.items()}
    keys = [ex.key for ex in examples]
    rows_out: list[dict[str, Any]] = []
    base = per[label(TODAY)]
    for split, members in [("all", set(keys)), *sides.items()]:
        idx = np.array([k in members for k in keys])
        for name, s in per.items():
            hmask = idx & ~np.isnan(s["human"])
            rows_out.append({
                "split": split, "arm": name, "queries": int(idx.sum()),
                "ndcg@10": ci(s["ndcg"][idx]), "judged@10": float(s["judged"][idx].mean()),
                "delta_vs_today": ci(s["ndcg"][idx] - base["ndcg"][idx]),
                "human_only": {"ndcg@10": float(np.nanmean(s["human"][hmask])),
                               "judged@10": float(np.nanmean(s["hjudged"][hmask]))},
            })  # fmt: skip
    # out of fold: the hybrid weighting chosen on one side, scored on the other
    hybrid = [label(w) for w in WEIGHTS if min(w) > 0]
    out_of_fold = {}
    for fit, score in (("train", "val"), ("val", "train")):
        fit_idx = np.array([k in sides[fit] for k in keys])
        score_idx = np.array([k in sides[score] for k in keys])
        best = max(hybrid, key=lambda n: per[n]["ndcg"][fit_idx].mean())
        out_of_fold[f"chosen_on_{fit}"] = {
            "arm": best,
            f"{score}_ndcg@10": ci(per[best]["ndcg"][score_idx]),
            f"{score}_delta_vs_today": ci(per[best]["ndcg"][score_idx] - base["ndcg"][score_idx]),
        }
    report = {
        **header("fusion_grades.py"),
        "index_version": retriever.version,
        "fusion_today": dataclasses.asdict(fusion),
        "grades": "human + assessed (service/grades.py); human_only beside",
        "rows": rows_out,
        "out_of_fold": out_of_fold,
        "load_average": loadavg(),
    }
    write_json(args.out, report)
    plot(rows_out, args.out.with_suffix(".png"))
    for r in rows_out:
        d, h = r["delta_vs_today"], r["human_only"]
        print(
            f"{r['split']:5} {r['arm']:24} {r['ndcg@10']['mean']:.3f} (judged {r['judged@10']:.2f})"
            f" Δ {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            f" human {h['ndcg@10']:.3f} ({h['judged@10']:.2f})"
        )
    print(out_of_fold)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    arms = [r["arm"] for r in rows if r["split"] == "all"]
    for i, (grades, key) in enumerate((("human + assessed", None), ("human only", "human_only"))):
        vals = [
            (r[key]["ndcg@10"] if key else r["ndcg@10"]["mean"])
            for r in rows
            if r["split"] == "all"
        ]
        ax.bar(np.arange(len(arms)) + i * 0.4, vals, 0.4, label=grades)
    ax.set_xticks(np.arange(len(arms)) + 0.2, arms, rotation=20, fontsize=8)
    ax.set_ylabel("NDCG@10, raw queries, all Chorus queries")
    ax.set_ylim(0.4, 0.85)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
