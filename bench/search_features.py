"""What filters, facets and exploration cost → bench/results/search_features.json (+ PNG).

Two questions, on the demo index (`make up` / `ospo bootstrap` builds it) and the Chorus
validation queries (the split `ospo eval` uses):

1. Speed: retrieval of a search with facet counting, with a brand filter and with a tight
   attribute filter, as ratios to a plain hybrid search measured in the same process, the
   same queries interleaved round-robin (so machine load falls on every variant alike).
2. Quality: exploration swaps one adjacent pair of the top `explore_positions` in a share of
   searches, half of them shown swapped. Its NDCG@10 cost is computed exactly per query
   (every pair, both coin sides) and scaled to the served share, with a bootstrap interval.

    .venv/bin/python bench/search_features.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from harness.results import RESULTS, loadavg, pyplot, save_figure, write_json
from harness.timing import pct
from rich.progress import track

from service.retrieval.facets import Filters
from service.retrieval.metrics import bootstrap_ci, ndcg_at_k
from service.retrieval.open import open_retriever
from service.settings import Settings
from trainer.training.data import load_examples, split_examples

ROOT = Path(__file__).resolve().parents[1]
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
OUT = RESULTS / "search_features.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    settings = Settings()
    retriever = open_retriever(settings)
    table = retriever.facets
    if table is None:
        raise SystemExit("the serving index has no facet columns: run `ospo index build`")
    examples = [ex for ex in load_examples(str(CHORUS)) if ex.n_relevant]
    val = split_examples(examples, settings.train_val_fraction, 0)[1]
    queries = [ex.query for ex in val]
    brand_counts = np.bincount(table.codes["brand"][table.codes["brand"] >= 0])
    top_brand = table.values["brand"][int(brand_counts.argmax())]
    colour = "product_colour"
    rare = table.values[colour][
        int(np.bincount(table.codes[colour][table.codes[colour] >= 0]).argmin())
    ]
    variants = {
        "plain": {},
        "facets": {"candidates": True},
        "brand_filter": {"filters": [Filters(brand=(top_brand,))], "candidates": True},
        "tight_filter": {"filters": [Filters(attributes=((colour, (rare,)),))], "candidates": True},
    }
    admitted = {
        name: int(retriever.mask(v["filters"][0]).sum())
        if "filters" in v
        else retriever.manifest.count
        for name, v in variants.items()
    }
    facets = table.default_facets()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for q in queries:  # warm the encoder and the lexical matrix
        retriever.rank([q], 10)
    for _ in track(range(args.repeats), description="timing variants"):
        for q in queries:
            for name, kw in variants.items():
                t0 = time.perf_counter()
                ranking = retriever.rank([q], 10, **kw)[0]
                if kw.get("candidates"):
                    table.counts(ranking.candidates, facets)
                    table.price_stats(ranking.candidates)
                times[name].append((time.perf_counter() - t0) * 1000)
    median = {name: float(np.median(v)) for name, v in times.items()}
    speed = {
        name: {
            "median_ms": median[name],
            "p95_ms": pct(times[name], 95),
            "ratio_to_plain": median[name] / median["plain"],
            "admitted_rows": admitted[name],
        }
        for name in variants
    }

    positions = settings.explore_positions
    base, explored = [], []
    for ex in track(val, description="exploration cost"):
        ids = [retriever.ids[r] for r in retriever.rank([ex.query], 10)[0].rows]
        n0 = ndcg_at_k(ids, ex.targets, 10)
        pairs = range(1, min(positions, len(ids)))
        swapped = []
        for k in pairs:
            s = list(ids)
            s[k - 1], s[k] = s[k], s[k - 1]
            swapped.append(ndcg_at_k(s, ex.targets, 10))
        base.append(n0)
        # An exploring search draws a pair uniformly, then a fair coin.
        explored.append(0.5 * n0 + 0.5 * float(np.mean(swapped)) if swapped else n0)
    per_explored = np.subtract(explored, base)
    share = settings.explore_share
    d_mean, d_lo, d_hi = bootstrap_ci(per_explored.tolist())
    quality = {
        "queries": len(val),
        "served_ndcg@10_without": float(np.mean(base)),
        "explore_share": share,
        "explore_positions": positions,
        "delta_per_exploring_search": {"mean": d_mean, "lo": d_lo, "hi": d_hi},
        "delta_served_at_share": {"mean": share * d_mean, "lo": share * d_lo, "hi": share * d_hi},
    }
    report = {
        "index": retriever.version,
        "products": retriever.manifest.count,
        "queries": len(queries),
        "repeats": args.repeats,
        "filters": {"brand": top_brand, colour: rare},
        "speed": speed,
        "exploration_quality": quality,
        "load_average": loadavg(),
    }
    write_json(OUT, report, indent=1)
    fig, ax = pyplot().subplots(figsize=(6, 3.2))
    names = list(variants)
    ax.bar(names, [speed[n]["ratio_to_plain"] for n in names], color="#4a7")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("median retrieval time / plain")
    ax.set_title(f"filters and facets on {retriever.manifest.count} products")
    fig.tight_layout()
    save_figure(fig, OUT.with_suffix(".png"), dpi=120)
    print(json.dumps({"speed": speed, "exploration_quality": quality}, indent=1))


if __name__ == "__main__":
    main()
