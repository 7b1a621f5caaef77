"""Raw-query NDCG@10 measured through the public HTTP API → bench/results/http_quality.json.

Sends every Chorus validation query (the split `ospo eval` uses) to `POST /v1/search` of a
running service once per retrieval mode and scores the returned product ids against the
judgments; paired bootstrap intervals against the dense mode (the old serving). Start the
service first (`make up`, or `ospo serve`), then:
    .venv/bin/python bench/http_quality.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import numpy as np
from harness.results import loadavg, write_json

from service.retrieval.metrics import bootstrap_ci, judged_at_k, ndcg_at_k
from trainer.training.data import Example, load_examples, split_examples

ROOT = Path(__file__).resolve().parents[1]
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"


def judged_queries(split: str = "val") -> list[Example]:
    """Chorus queries with a relevant product; `val`: the validation side of the split that
    `ospo eval` and the online update use (fraction 0.3, seed 0)."""
    examples = [ex for ex in load_examples(str(CHORUS)) if ex.n_relevant]
    return split_examples(examples, 0.3, 0)[1] if split == "val" else examples


def served_ndcg(
    http: httpx.Client,
    ex: Example,
    mode: str | None = None,
    k: int = 10,
    user_id: str | None = None,
) -> tuple[float, dict]:
    """(NDCG@k of what `POST /v1/search` returned for the query, the response body)."""
    body = {"query": ex.query, "k": k} | ({"mode": mode} if mode else {})
    body |= {"user_id": user_id} if user_id else {}
    r = http.post("/v1/search", json=body)
    r.raise_for_status()
    answer = r.json()
    return ndcg_at_k([hit["product_id"] for hit in answer["results"]], ex.targets, k), answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--split", choices=["val", "all"], default="val")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_quality.json")
    args = ap.parse_args()
    examples = judged_queries(args.split)
    scores: dict[str, list[float]] = {}
    judged: dict[str, list[float]] = {}
    with httpx.Client(base_url=args.url, timeout=60) as http:
        for mode in ("dense", "lexical", "hybrid"):
            answers = [served_ndcg(http, ex, mode) for ex in examples]
            scores[mode] = [ndcg for ndcg, _ in answers]
            judged[mode] = [
                judged_at_k([h["product_id"] for h in answer["results"]], ex.targets, 10)
                for ex, (_, answer) in zip(examples, answers, strict=True)
            ]
    report: dict = {"url": args.url, "split": args.split, "queries": len(examples), "modes": {}}
    for mode, values in scores.items():
        mean, lo, hi = bootstrap_ci(values)
        report["modes"][mode] = {
            "ndcg@10": mean, "ci95": [lo, hi], "judged@10": float(np.mean(judged[mode])),
        }  # fmt: skip
        if mode != "dense":
            d = np.subtract(values, scores["dense"]).tolist()
            report["modes"][mode]["delta_vs_dense"] = dict(
                zip(("mean", "lo", "hi"), bootstrap_ci(d), strict=True)
            )
    report["load_average"] = loadavg()
    write_json(args.out, report, indent=1)
    print(json.dumps(report["modes"], indent=1))


if __name__ == "__main__":
    main()
