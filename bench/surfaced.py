"""What a policy surfaces that nobody graded: a grading sheet, and the scores regraded.

A quality run (`bench/quality.py`) keeps every policy's greedy search texts per query. Their
rankings reach products outside the judged pool (human + the shipped assessed grades), and
NDCG scores those as irrelevant (pool bias; judged@10 says how much). This script closes the
gap the way the assessed pool's README asks — grades of our own, in a file of their own, with
the assessor named in `source` — and then reports the run with and without them:

    sheet   the ungraded products in each policy's top 10 (every retriever the run scored,
            every seed), per query, with the query's human anchors (graded, shown) and
            `--hidden` more human-graded products whose grades are withheld, to measure the
            assessor's agreement with the raters (GUIDE.md, as the shipped pool did)
            → SHEET.jsonl, one query per line
    score   the run's rankings rescored under three grade sets — human only, the shipped pool
            (human + `assessed`), and that pool + GRADES.csv — with judged@10 beside each NDCG
            and the paired intervals of bench/quality.py; plus the assessor's agreement on the
            hidden pairs → OUT.json

    .venv/bin/python bench/surfaced.py sheet bench/results/quality-additions/quality.json \
        --out bench/results/quality-additions/surfaced-sheet.jsonl
    .venv/bin/python bench/surfaced.py score bench/results/quality-additions/quality.json \
        --grades data/chorus_icecat/assessed/surfaced_grades.csv \
        --out bench/results/quality-additions/regraded.json

Rankings are recomputed from the stored search texts on the serving index, so the index must
be the one the run scored (checked: `score` reproduces the run's own NDCG under the shipped
pool, or under the completed pool for a run made after our grades, before it reports
anything else).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from harness.results import header, write_json  # noqa: E402
from quality import METHODS, aggregate, ci  # noqa: E402
from sqlalchemy import select  # noqa: E402

from service.catalog.formats import CHORUS_GAINS, assessed_grade_files, parse_labels  # noqa: E402
from service.db.engine import session_scope  # noqa: E402
from service.db.models import Product  # noqa: E402
from service.domain import ExpansionEntry, RetrievalMode  # noqa: E402
from service.grades import ASSESSED, is_assessed  # noqa: E402
from service.normalize import normalize_query  # noqa: E402
from service.records import LabelRecord  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.training.data import examples_from_labels  # noqa: E402
from trainer.training.evaluate import DEPTH, METRICS, query_metrics  # noqa: E402
from trainer.training.resources import load_retriever  # noqa: E402
from trainer.training.reward import RewardModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
ANCHORS = 4  # human-graded products shown with their grade, per query (as the shipped pool)
GRADE_OF_GAIN = {gain: grade for grade, gain in CHORUS_GAINS.items()}  # back to the 0–3 scale
DESCRIPTION_CHARS = 400


# ---------------------------------------------------------------------------------------------
# Grades and rankings
# ---------------------------------------------------------------------------------------------


def chorus_labels(extra: Sequence[Path] = ()) -> list[LabelRecord]:
    """The human Chorus grades, every shipped assessed file and the ``extra`` grade files."""
    files = [CHORUS, *assessed_grade_files(CHORUS)]
    files += [p for p in extra if p.resolve() not in {f.resolve() for f in files}]
    return [lab for path in files for lab in parse_labels("chorus", path)]


GRADE_SETS: dict[str, Callable[[str], bool]] = {
    "human": lambda source: not is_assessed(source),
    "shipped": lambda source: not is_assessed(source) or source == ASSESSED,
    "completed": lambda source: True,
}


Grades = dict[str, dict[str, float]]  # query key -> product id -> gain


def grades_under(
    labels: Iterable[LabelRecord], keep: Callable[[str], bool], row_of: dict[str, int]
) -> Grades:
    """The merged grades of the labels whose source ``keep`` admits, products in the index."""
    kept = examples_from_labels([lab for lab in labels if keep(lab.source)])
    return {ex.key: {p: g for p, g in ex.targets.items() if p in row_of} for ex in kept}


def run_queries(report: dict[str, Any], set_name: str) -> list[tuple[str, str]]:
    """(query key, query) of the run's eval set, in the run's order."""
    return [
        (normalize_query(r["query"]), r["query"]) for r in report["rewrites"][set_name]["raw"][0]
    ]


def run_rankings(
    report: dict[str, Any], set_name: str, retriever: Any
) -> dict[str, list[dict[str, list[list[str]]]]]:
    """method -> per seed -> retriever -> per query (in the run's order) ranked product ids."""
    entry = ExpansionEntry(report["setup"]["train_config"]["expansion_entry"])
    queries = dict(run_queries(report, set_name))
    modes = [m for m in RetrievalMode if m.value in report["summary"][set_name]["raw"]]
    out: dict[str, list[dict[str, list[list[str]]]]] = {}
    for method, seeds in report["rewrites"][set_name].items():
        out[method] = []
        for rows in seeds:
            pairs = [(row["text"], normalize_query(row["query"])) for row in rows]
            out[method].append({
                mode.value: RewardModel(
                    retriever, dict.fromkeys(queries, {}), depth=DEPTH, retrieval=mode, entry=entry,
                    queries=queries,
                ).rankings(pairs)
                for mode in modes
            })  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# sheet
# ---------------------------------------------------------------------------------------------


def product_cards(database_url: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What the assessor sees of a product: title, brand, type, price, short description."""
    wanted = sorted(set(ids))
    cards: dict[str, dict[str, Any]] = {}
    with session_scope(database_url) as s:
        for i in range(0, len(wanted), 500):
            for p in s.scalars(select(Product).where(Product.id.in_(wanted[i : i + 500]))):
                attrs = p.attributes or {}
                cards[p.id] = {
                    "id": p.id,
                    "title": p.title,
                    "brand": p.brand,
                    "type": attrs.get("attr_t_product_type") or attrs.get("attr_t_type"),
                    "price": attrs.get("price"),
                    "description": (p.description or "")[:DESCRIPTION_CHARS],
                }
    missing = set(wanted) - set(cards)
    if missing:
        raise SystemExit(f"{len(missing)} products are not in the database (run ospo bootstrap)")
    return cards


def sheet(args: argparse.Namespace) -> None:
    report = json.loads(args.results.read_text())
    settings = get_settings()
    retriever = load_retriever(settings)
    labels = chorus_labels(args.grades)
    known = grades_under(labels, GRADE_SETS["completed"], retriever.row_of)
    human = grades_under(labels, GRADE_SETS["human"], retriever.row_of)
    rankings = run_rankings(report, args.set, retriever)
    text = dict(run_queries(report, args.set))
    keys = list(text)
    ungraded: dict[str, set[str]] = {key: set() for key in keys}
    for per_seed in rankings.values():
        for by_mode in per_seed:
            for ranked_per_query in by_mode.values():
                for key, ranked in zip(keys, ranked_per_query, strict=True):
                    ungraded[key] |= {p for p in ranked[:10] if p not in known.get(key, {})}
    rng = random.Random(args.seed)
    lines, all_ids = [], set()
    for key in keys:
        graded = sorted(human.get(key, {}).items())
        rng.shuffle(graded)
        anchors = graded[:ANCHORS]
        hidden = graded[ANCHORS : ANCHORS + args.hidden] if ungraded[key] else []
        items = [pid for pid, _ in hidden] + sorted(ungraded[key])
        rng.shuffle(items)  # hidden pairs are not told apart from the rest
        lines.append({
            "query": text[key],
            "anchors": [(pid, GRADE_OF_GAIN[g]) for pid, g in anchors],
            "grade": items,
            "hidden": [pid for pid, _ in hidden],
        })  # fmt: skip
        all_ids |= {pid for pid, _ in anchors} | set(items)
    cards = product_cards(settings.resolved_database_url, all_ids)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for line in lines:
            line["anchors"] = [{**cards[pid], "grade": g} for pid, g in line["anchors"]]
            line["grade"] = [cards[pid] for pid in line["grade"]]
            f.write(json.dumps(line) + "\n")
    n, queries = sum(map(len, ungraded.values())), sum(1 for v in ungraded.values() if v)
    hidden = sum(len(x["hidden"]) for x in lines)
    print(f"{n} ungraded products over {queries} queries (+ {hidden} hidden human pairs)")


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------


def agreement(labels: list[LabelRecord], extra_sources: set[str]) -> dict[str, Any]:
    """The added grades against the human grade on the pairs both graded (the hidden ones)."""
    from sklearn.metrics import cohen_kappa_score

    human = {(normalize_query(x.query), x.product_id): x.gain for x in labels
             if not is_assessed(x.source)}  # fmt: skip
    pairs = [
        (GRADE_OF_GAIN[human[k]], GRADE_OF_GAIN[x.gain])
        for x in labels
        if x.source in extra_sources and (k := (normalize_query(x.query), x.product_id)) in human
    ]
    if not pairs:
        return {"pairs": 0}
    h, a = np.array(pairs).T
    return {
        "pairs": len(pairs),
        "exact": float(np.mean(h == a)),
        "within_one": float(np.mean(np.abs(h - a) <= 1)),
        "quadratic_kappa": float(cohen_kappa_score(h, a, weights="quadratic")),
        "relevant_agree": float(np.mean((h >= 2) == (a >= 2))),
    }


def score(args: argparse.Namespace) -> None:
    report = json.loads(args.results.read_text())
    retriever = load_retriever(get_settings())
    if retriever.version != report["setup"]["index_version"]:
        print(f"note: index {retriever.version}; the run scored {report['setup']['index_version']}")
    labels = chorus_labels(args.grades)
    rankings = run_rankings(report, args.set, retriever)
    keys = [key for key, _ in run_queries(report, args.set)]
    out: dict[str, Any] = {}
    for name, keep in GRADE_SETS.items():
        grades = grades_under(labels, keep, retriever.row_of)
        per_query = {m: [metrics(by_mode, keys, grades) for by_mode in rankings[m]]
                     for m in METHODS if m in rankings}  # fmt: skip
        out[name] = aggregate(per_query)
        out[name]["per_query_delta_vs_raw"] = per_query_deltas(per_query, keys)
    recorded = report["summary"][args.set]["raw"]["hybrid"]["ndcg@10"]["mean"]
    # the run scored with the grades of its day: one of the three sets must reproduce it
    again = {name: summary["raw"]["hybrid"]["ndcg@10"]["mean"] for name, summary in out.items()}
    if all(abs(recorded - v) > 1e-6 for v in again.values()):
        raise SystemExit(f"raw hybrid NDCG@10 {again} ≠ the run's {recorded:.4f}: other index?")
    extra = {lab.source for lab in labels if is_assessed(lab.source) and lab.source != ASSESSED}
    result = {
        **header(__file__),
        "results": str(args.results),
        "set": args.set,
        "grades": [str(p) for p in args.grades],
        "added_sources": sorted(extra),
        "agreement_on_hidden_human_pairs": agreement(labels, extra),
        "by_grades": out,
    }
    write_json(args.out, result)
    table(out)


def metrics(
    by_mode: dict[str, list[list[str]]], keys: list[str], grades: Grades
) -> dict[str, dict[str, list[float]]]:
    """retriever -> metric -> per-query values, as bench/quality.py records them."""
    out: dict[str, dict[str, list[float]]] = {}
    for mode, ranked in by_mode.items():
        rows = [query_metrics(r, grades.get(k, {})) for r, k in zip(ranked, keys, strict=True)]
        out[mode] = {m: [row[m] for row in rows] for m in METRICS}
    return out


def per_query_deltas(
    per_query: dict[str, list[dict[str, dict[str, list[float]]]]], keys: list[str]
) -> dict[str, Any]:
    """Per method: hybrid Δ NDCG@10 against raw for each query (seed-averaged), and the paired
    interval once the query that moves it most is left out — is a mean one query's doing?"""

    def hybrid(method: str) -> np.ndarray:
        return np.mean([run["hybrid"]["ndcg@10"] for run in per_query[method]], axis=0)

    out: dict[str, Any] = {}
    for method in per_query:
        if method == "raw":
            continue
        diff = hybrid(method) - hybrid("raw")
        top = int(np.argmax(np.abs(diff)))
        out[method] = {
            "by_query": dict(zip(keys, diff.round(4).tolist(), strict=True)),
            "largest": keys[top],
            "without_largest": ci(np.delete(diff, top)),
        }
    return out


def table(out: dict[str, Any]) -> None:
    print("method   " + "  ".join(f"{name:>22}" for name in out))
    for method in METHODS:
        cells = []
        for summary in out.values():
            if method not in summary:
                continue
            hybrid = summary[method]["hybrid"]
            cells.append(f"{hybrid['ndcg@10']['mean']:.3f} (j {hybrid['judged@10']['mean']:.2f})")
            delta = summary["delta_ndcg@10"].get(f"{method}-raw_hybrid", {}).get("hybrid")
            if delta and method != "raw":
                cells[-1] += f" {delta['mean']:+.3f}"
        print(f"{method:8} " + "  ".join(f"{c:>22}" for c in cells))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("sheet", "score"):
        p = sub.add_parser(name)
        p.add_argument("results", type=Path, help="a bench/quality.py results file")
        p.add_argument("--set", default="chorus_val", help="the run's eval set")
        p.add_argument(
            "--grades", type=Path, action="append", default=[],
            help="grade files of our own (query,docid,grade,source); repeatable",
        )  # fmt: skip
        p.add_argument("--out", type=Path, required=True)
    sub.choices["sheet"].add_argument(
        "--hidden", type=int, default=2, help="human-graded products per query graded blind"
    )
    sub.choices["sheet"].add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.results.is_file():
        sys.exit(f"{args.results}: no such results file")
    {"sheet": sheet, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
