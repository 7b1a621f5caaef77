"""Lexical vs dense vs hybrid retrieval benchmark → bench/results/lexical.json + lexical.png.

On the Chorus judgments (queries with at least one positive grade, gains as the parser gives
them: 3 → 1.0, 2 → 0.5, 1 → 0.1) over the whole Open Icecat catalogue (19,406 products) it
measures NDCG@10 (95% percentile-bootstrap CI over queries) and recall@100 of top-100 rankings:

- dense: MiniLM (the service's embedder, normalised, exact inner product) on three texts —
  ``title``; ``search_text`` (the service's text: title · brand · description, ≤ 512 chars);
  ``full`` (title · brand · untruncated description · "key: value" of every product attribute
  except price, release date, EAN and image URL; MiniLM itself truncates at 256 word pieces);
- bm25s (method "lucene", k1 = 1.5, b = 0.75, English stopwords) on the same three texts, with
  and without the Snowball English stemmer (PyStemmer);
- tantivy (BM25, k1 = 1.2, b = 0.75; its ``en_stem`` and ``default`` tokenizers, which keep
  stopwords, and ``en_stem`` + English stopwords) on the best bm25s text, to compare libraries:
  NDCG, index build time, p50/p99 latency of one query, on-disk size; plus the best bm25s
  configuration with tantivy's k1 = 1.2 (a diagnostic row, never selected);
- hybrids of the best dense text and the best bm25s configuration: reciprocal rank fusion
  Σ_arm w_arm / (k + rank), dense weight 1, grid k ∈ {10, 30, 60, 100} × lexical weight ∈
  {0.5, 1, 1.5, 2}; score fusion (per query min-max of each arm's top-100 scores, missing = 0,
  lexical weight ∈ {0.5, 1, 2}); RRF (k = 60, equal weights) of every dense text × every
  bm25s text (each with its better stemming choice), and of the best dense text × each tantivy
  run.

Every configuration also gets paired differences (bootstrap of the per-query differences) against
"dense search_text" and "bm25s search_text" (no stemming). Since the grid is tuned on the same
~100 queries, ``two_fold`` reports honest numbers for each selection (the hybrid grid, the single
arms' text/stemming choice): choose on one half of the queries (split by a hash of the query),
score on the other half, and vice versa; the out-of-fold per-query values of both halves are
pooled into one mean with a CI. The primary split is repeated with ``--splits`` salted hashes.

Run (the first run embeds 3 × 19,406 texts: ~35 min on one busy core, mostly the long ``full``
texts; the matrices are cached under bench/results/tmp/lexical/, so re-runs take about a minute):
    .venv/bin/pip install pystemmer tantivy      # optional extras: stemming and tantivy rows
    .venv/bin/python bench/lexical.py

This file runs the comparison and reports it; lexical_arms.py makes the single-arm runs,
lexical_fusion.py the hybrids and the selection statistics.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness.results import (
    RESULTS,
    loadavg,
    machine,
    package_versions,
    pyplot,
    save_figure,
    write_json,
)
from lexical_arms import (
    DATA,
    DEPTH,
    FIELDS,
    Run,
    bm25s_run,
    console,
    dense_runs,
    field_texts,
    load_judgments,
    tantivy_run,
)
from lexical_fusion import ci_dict, rrf, score_fusion, selection_report
from rich.console import Console
from tqdm import tqdm

from service.catalog.formats import parse_icecat_products
from service.retrieval.metrics import ndcg_at_k, recall_at_k

OUT = RESULTS
REF_DENSE = "dense search_text"
REF_LEX = "bm25s search_text"
RRF_KS = (10, 30, 60, 100)
RRF_LEX_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
SCORE_LEX_WEIGHTS = (0.5, 1.0, 2.0)


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    configs = result["configs"]
    best_rrf = result["hybrid"]["rrf_grid_selection"]["in_sample_best"]
    shown = [
        n
        for n, c in configs.items()
        if c["kind"]
        in {
            "dense",
            "bm25s",
            "bm25s_variant",
            "tantivy",
            "score_fusion",
            "rrf_cross_field",
            "rrf_tantivy",
        }
        or n == best_rrf
    ]
    rows = [(n, configs[n]["ndcg@10"]["mean"], *configs[n]["ndcg@10"]["ci95"]) for n in shown]
    oof = result["hybrid"]["rrf_grid_selection"]["two_fold"]["out_of_fold_ndcg@10"]
    rows.append(("RRF grid, 2-fold (chosen on other half)", oof["mean"], *oof["ci95"]))
    colours = {
        "dense": "tab:blue",
        "bm25s": "tab:orange",
        "bm25s_variant": "tab:brown",
        "tantivy": "tab:red",
        "score_fusion": "tab:purple",
        "rrf_cross_field": "tab:green",
        "rrf_tantivy": "tab:pink",
        "rrf": "tab:olive",
    }
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    means = np.asarray([r[1] for r in rows])
    err = np.asarray([[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]])
    kinds = [configs[r[0]]["kind"] if r[0] in configs else "rrf" for r in rows]
    ax.barh(y, means, xerr=err, color=[colours[k] for k in kinds], capsize=2, height=0.7)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("NDCG@10 (95% bootstrap CI)")
    ax.set_xlim(0.3, 0.85)
    ax.axvline(configs[REF_LEX]["ndcg@10"]["mean"], color="grey", lw=0.6, ls="--")
    ax.set_title(
        f"Chorus × Icecat, {result['dataset']['queries']} queries: dense, lexical, hybrid",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def versions() -> dict[str, str | None]:
    return package_versions(
        ("bm25s", "PyStemmer", "tantivy", "numpy", "torch", "sentence-transformers")
    )


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT / "lexical.json")
    ap.add_argument("--plot", type=Path, default=OUT / "lexical.png")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for embedding (0: all cores, or 1 when the 1-min load ≥ 1)",
    )
    ap.add_argument("--latency-reps", type=int, default=3, help="timed passes over the queries")
    ap.add_argument("--splits", type=int, default=20, help="salted repeats of the 2-fold split")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()
    import torch

    threads = args.threads or (1 if load_start[0] >= 1.0 else (os.cpu_count() or 1))
    torch.set_num_threads(threads)
    console.log(f"load average {load_start}, torch threads {threads}")

    products = [p for p, _ in parse_icecat_products(DATA / "icecat_products")]
    ids = [p.id for p in products]
    texts = field_texts(products)
    targets = load_judgments()
    queries = list(targets)
    console.log(f"{len(products):,} products, {len(queries)} queries with a positive grade")

    runs: dict[str, Run] = {}
    kinds: dict[str, str] = {}
    libraries: dict[str, Any] = {}

    # dense
    dense, libraries["dense"] = dense_runs(texts, ids, queries, args)
    for name, run in dense.items():
        runs[name], kinds[name] = run, "dense"

    # bm25s
    stems = (False, True) if available("Stemmer") else (False,)
    if len(stems) == 1:
        console.log("[yellow]PyStemmer missing: no stemmed rows (pip install pystemmer)")
    libraries["bm25s"] = {}
    for field in tqdm(FIELDS, desc="bm25s"):
        for stem in stems:
            name = f"bm25s {field}" + (" +stem" if stem else "")
            runs[name], info = bm25s_run(field, texts[field], ids, queries, stem, args)
            kinds[name] = "bm25s"
            libraries["bm25s"][name] = info

    def ndcgs(run: Run) -> np.ndarray:
        return np.asarray(
            [ndcg_at_k(r, targets[q], 10) for r, q in zip(run.ids, queries, strict=True)]
        )

    per_query = {n: ndcgs(r) for n, r in runs.items()}
    best_dense = max((n for n in runs if kinds[n] == "dense"), key=lambda n: per_query[n].mean())
    best_lex = max((n for n in runs if kinds[n] == "bm25s"), key=lambda n: per_query[n].mean())
    best_field = best_lex.split()[1]
    console.log(f"best dense: {best_dense}; best bm25s: {best_lex}")

    # tantivy on the best bm25s text
    if available("tantivy"):
        libraries["tantivy"] = {}
        for tokenizer in ("en_stem", "default", "en_stem_stop"):
            name = f"tantivy {best_field} {tokenizer}"
            runs[name], info = tantivy_run(texts[best_field], ids, queries, tokenizer, args)
            kinds[name] = "tantivy"
            libraries["tantivy"][name] = info
            per_query[name] = ndcgs(runs[name])
    else:
        console.log("[yellow]tantivy missing: no tantivy rows (pip install tantivy)")
    # bm25s with tantivy's k1, to separate library from parameter differences (not selectable)
    name = f"{best_lex} k1=1.2"
    runs[name], info = bm25s_run(
        best_field, texts[best_field], ids, queries, "+stem" in name, args, 1.2
    )
    kinds[name] = "bm25s_variant"
    libraries["bm25s"][name] = info
    per_query[name] = ndcgs(runs[name])

    # hybrids of the best dense and the best bm25s run
    short = {
        best_dense: best_dense.replace("dense ", "D:"),
        best_lex: best_lex.replace("bm25s ", "L:"),
    }
    pair = f"{short[best_dense]} + {short[best_lex]}"
    rrf_names = []
    for k in RRF_KS:
        for w in RRF_LEX_WEIGHTS:
            name = f"RRF {pair} k={k} wL={w:g}"
            runs[name] = rrf([(runs[best_dense], 1.0), (runs[best_lex], w)], k)
            kinds[name] = "rrf"
            rrf_names.append(name)
    score_names = []
    for w in SCORE_LEX_WEIGHTS:
        name = f"score {pair} wL={w:g}"
        runs[name] = score_fusion([(runs[best_dense], 1.0), (runs[best_lex], w)])
        kinds[name] = "score_fusion"
        score_names.append(name)
    # every dense text × every bm25s text (its better stemming choice), RRF k=60, equal weights
    cross_names = []
    for df in FIELDS:
        for lf in FIELDS:
            lex = max(
                (n for n in runs if kinds[n] == "bm25s" and n.split()[1] == lf),
                key=lambda n: per_query[n].mean(),
            )
            name = f"RRF D:{df} + L:{lex.removeprefix('bm25s ')} k=60"
            runs[name] = rrf([(runs[f"dense {df}"], 1.0), (runs[lex], 1.0)], 60)
            kinds[name] = "rrf_cross_field"
            cross_names.append(name)
    # the best dense text + each tantivy tokenizer, RRF k=60, equal weights
    for n in [n for n in runs if kinds[n] == "tantivy"]:
        name = f"RRF {short[best_dense]} + {n} k=60"
        runs[name] = rrf([(runs[best_dense], 1.0), (runs[n], 1.0)], 60)
        kinds[name] = "rrf_tantivy"
        cross_names.append(name)
    for n, r in runs.items():
        if n not in per_query:
            per_query[n] = ndcgs(r)

    refs = {"dense_search_text": per_query[REF_DENSE], "bm25s_search_text": per_query[REF_LEX]}
    configs: dict[str, Any] = {}
    for n, r in runs.items():
        rec = [recall_at_k(ids_, targets[q], DEPTH) for ids_, q in zip(r.ids, queries, strict=True)]
        configs[n] = {
            "kind": kinds[n],
            "ndcg@10": ci_dict(per_query[n]),
            "recall@100": round(float(np.mean(rec)), 4),
            **{f"delta_vs_{rn}": ci_dict(per_query[n] - rv) for rn, rv in refs.items()},
        }

    def pick(names: list[str]) -> dict[str, np.ndarray]:
        return {n: per_query[n] for n in names}

    singles = {
        kind: [n for n in runs if kinds[n] == kind] for kind in ("dense", "bm25s", "tantivy")
    }
    sel_refs = {
        **refs,
        "best_bm25s": per_query[best_lex],
        "rrf_k60_wL1": per_query[f"RRF {pair} k=60 wL=1"],
    }
    hybrid = {
        "dense_arm": best_dense,
        "lexical_arm": best_lex,
        "rrf_grid": {
            f"k={k}": {
                f"wL={w:g}": configs[f"RRF {pair} k={k} wL={w:g}"]["ndcg@10"]["mean"]
                for w in RRF_LEX_WEIGHTS
            }
            for k in RRF_KS
        },
        "rrf_grid_selection": selection_report(pick(rrf_names), queries, sel_refs, args.splits),
        "rrf_and_score_fusion_selection": selection_report(
            pick(rrf_names + score_names), queries, sel_refs, args.splits
        ),
        "all_hybrids_selection": selection_report(
            pick(rrf_names + score_names + cross_names), queries, sel_refs, args.splits
        ),
    }
    arm_selection = {
        f"{kind}_text_and_stemming": selection_report(pick(names), queries, refs, args.splits)
        for kind, names in singles.items()
        if kind != "tantivy"
    }
    # paired per-query differences behind the recommendations: a − b, only pairs that exist
    rrf_default = f"RRF {pair} k=60 wL=1"
    comparisons = [
        *((f"bm25s {f} +stem", f"bm25s {f}") for f in FIELDS),
        ("dense full", "dense search_text"),
        ("bm25s full +stem", "bm25s search_text +stem"),
        *((n, best_lex) for n in runs if kinds[n] in {"tantivy", "bm25s_variant"}),
        (hybrid["rrf_grid_selection"]["in_sample_best"], rrf_default),
        *((n, rrf_default) for n in score_names),
        *((n, rrf_default) for n in cross_names if n != f"RRF {pair} k=60"),
        *((n, best_lex) for n in (rrf_default, hybrid["rrf_grid_selection"]["in_sample_best"])),
        *((n, best_lex) for n in score_names),
    ]
    paired = {
        f"{a}  −  {b}": ci_dict(per_query[a] - per_query[b])
        for a, b in comparisons
        if a in per_query and b in per_query and a != b
    }

    result = {
        "what": __doc__.split("\n\n")[0],
        "dataset": {
            "judgments": "Chorus Broad_Query_Set_rated.csv, gains 3→1.0, 2→0.5, 1→0.1, 0→0",
            "catalogue": "Open Icecat (data/chorus_icecat/icecat_products)",
            "products": len(products),
            "queries": len(queries),
            "judged_pairs": sum(len(t) for t in targets.values()),
            "depth": DEPTH,
            "mean_chars": {f: round(float(np.mean([len(t) for t in texts[f]])), 1) for f in FIELDS},
        },
        "machine": machine(
            processor=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count(),
            torch_threads=threads,
            loadavg_start=[round(x, 2) for x in load_start],
            loadavg_end=loadavg(),
        ),
        "versions": versions(),
        "settings": {
            "bm25s": "method lucene, k1 1.5, b 0.75, stopwords 'en', stemmer Snowball english",
            "tantivy": "BM25 k1 1.2 b 0.75, one text field, query parser (OR of the terms)",
            "dense": "normalised MiniLM embeddings, exact inner product (numpy)",
            "rrf": "Σ w/(k + rank), rank 1-based in each arm's top-100, dense weight 1",
            "score_fusion": "per-query min-max of each arm's top-100 scores, missing 0",
            "two_fold": "choose on the queries of one sha1(query) % 2 half, score on the other",
        },
        "libraries": libraries,
        "selection": {"best_dense": best_dense, "best_bm25s": best_lex, **arm_selection},
        "hybrid": hybrid,
        "paired_differences": paired,
        "configs": configs,
    }
    write_json(args.out, result)
    plot(result, args.plot)
    console.log(f"wrote {args.out} and {args.plot}")
    summarize(result)


def summarize(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="NDCG@10")
    for col in ("config", "mean", "95% CI", "Δ dense st", "Δ bm25s st", "R@100"):
        table.add_column(col)
    for n, c in result["configs"].items():
        if (
            c["kind"] == "rrf"
            and "k=60 wL=1" not in n
            and n != (result["hybrid"]["rrf_grid_selection"]["in_sample_best"])
        ):
            continue
        table.add_row(
            n,
            f"{c['ndcg@10']['mean']:.3f}",
            "[{:.3f}, {:.3f}]".format(*c["ndcg@10"]["ci95"]),
            f"{c['delta_vs_dense_search_text']['mean']:+.3f}",
            f"{c['delta_vs_bm25s_search_text']['mean']:+.3f}",
            f"{c['recall@100']:.3f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
