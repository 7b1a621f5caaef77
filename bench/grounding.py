"""Where a rewrite can pay → bench/results/grounding.json + grounding.png.

On the Chorus queries (split as `ospo train`/`ospo eval` split them: 30% validation by hash,
seed 0) over the serving index, with human + assessed grades (judged@10 beside every NDCG;
human-only NDCG as a second column), this measures, per split:

1. *Term arms* (no model): the raw query; + the one term from the raw query's own top-10 titles
   that scores best per query (an oracle: it reads the grades); + a random such term (3 draws).
2. *How additions enter retrieval* for each arm: ``concat`` (search `query + additions`, both
   arms: today), ``lexical`` (the dense arm keeps the raw query, BM25 gets the additions),
   ``fused`` (RRF of the raw query's ranking and the expanded query's ranking).
3. *The base policy's prompts* (SmolLM2-135M, no adapter): the free expansion prompt
   (``expand-v2``) and the grounded one (``grounded-v1``: the raw query's top titles shown,
   additions copied from them or NONE): greedy, the mean of ``--samples`` samples at
   temperature 1, and the best of the samples or none (what a perfect abstaining chooser
   among the policy's own samples could reach).

Every arm reports the abstention rate (no addition) and how many queries gain / lose
(|Δ| > 0.001 NDCG@10 against raw). Paired 95% bootstrap intervals over queries.

    .venv/bin/python bench/grounding.py            # ≈10 min on this 2-core CPU
    .venv/bin/python bench/grounding.py --no-policy  # term arms only, ≈1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from service.domain import GradeSet  # noqa: E402
from service.policy.prompt import DEFAULT_PROMPT, GROUNDED_PROMPT, PromptConfig  # noqa: E402
from service.retrieval.fusion import fuse  # noqa: E402
from service.retrieval.index import Retriever  # noqa: E402
from service.retrieval.metrics import MIN_JUDGED, bootstrap_ci, judged_at_k, ndcg_at_k  # noqa: E402
from service.rewriting.grounding import TitleGrounder  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.training.data import Example, load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.training.resources import load_retriever, policy_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
OUT = ROOT / "bench" / "results"
ENTRIES = ("concat", "lexical", "fused")
DEPTH = 100  # each list's depth before the fused entry merges them
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "without",
        "x",
        "cm",
        "mm",
        "m",
        "kg",
        "g",
        "w",
        "v",
        "mah",
        "gb",
        "tb",
        "mb",
        "hz",
        "inch",
    ]
)
_WORD = re.compile(r"[a-z0-9][a-z0-9\-]*[a-z0-9]|[a-z]")
console = Console(stderr=True)


# ---------------------------------------------------------------------------------------------
# Rankings under each entry
# ---------------------------------------------------------------------------------------------


class Ranker:
    """Ranked product ids of (query, additions) under an entry, cached; batched per call."""

    def __init__(self, retriever: Retriever) -> None:
        self.r = retriever
        self.cache: dict[tuple[str, str, str], list[str]] = {}

    def _rows(self, texts: Sequence[str], lexical: Sequence[str] | None = None) -> list[Any]:
        return self.r.rank(list(texts), DEPTH, lexical_texts=lexical)

    def rank(self, pairs: Sequence[tuple[str, str]], entry: str) -> list[list[str]]:
        todo = [p for p in dict.fromkeys(pairs) if (entry, *p) not in self.cache]
        if todo:
            queries = [q for q, _ in todo]
            expanded = [f"{q} {a}".strip() for q, a in todo]
            if entry == "concat":
                out = [rk.rows for rk in self._rows(expanded)]
            elif entry == "lexical":
                out = [rk.rows for rk in self._rows(queries, expanded)]
            else:
                raw, exp = self._rows(queries), self._rows(expanded)
                cfg = self.r.fusion
                out = [
                    fuse(((a.rows, a.scores), (b.rows, b.scores)), (1.0, 1.0), cfg, DEPTH)[0]
                    if add
                    else a.rows
                    for a, b, (_, add) in zip(raw, exp, todo, strict=True)
                ]
            for p, rows in zip(todo, out, strict=True):
                self.cache[(entry, *p)] = [self.r.ids[i] for i in rows.tolist()]
        return [self.cache[(entry, *p)] for p in pairs]


def title_terms(retriever: Retriever, ranker: Ranker, query: str, n: int = 10) -> list[str]:
    """Distinct words of the raw query's top-n titles that are not in the query."""
    top = ranker.rank([(query, "")], "concat")[0][:n]
    own = set(_WORD.findall(query.lower()))
    terms: dict[str, None] = {}
    for pid in top:
        for w in _WORD.findall(retriever.titles[retriever.row_of[pid]].lower()):
            if w not in own and w not in STOPWORDS and not w.isdigit():
                terms.setdefault(w, None)
    return list(terms)


# ---------------------------------------------------------------------------------------------
# Arms: per query, one or more candidate additions ("" = abstain)
# ---------------------------------------------------------------------------------------------


def score(
    ranker: Ranker, examples: Sequence[Example], additions: Sequence[str], entry: str,
    targets: Sequence[dict[str, float]],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(NDCG@10, judged@10) per query for one addition per query."""
    ranked = ranker.rank([(ex.query, a) for ex, a in zip(examples, additions, strict=True)], entry)
    ndcg = np.array([ndcg_at_k(r, t, 10) for r, t in zip(ranked, targets, strict=True)])
    judged = np.array([judged_at_k(r, t, 10) for r, t in zip(ranked, targets, strict=True)])
    return ndcg, judged


def summarize(
    name: str, per_draw: list[tuple[np.ndarray, np.ndarray]], raw: np.ndarray,
    human: list[tuple[np.ndarray, np.ndarray]], raw_human: np.ndarray, abstain: float,
) -> dict[str, Any]:  # fmt: skip
    """Mean over draws per query, then bootstrap over queries; paired Δ against raw."""
    ndcg = np.mean([d[0] for d in per_draw], axis=0)
    judged = np.mean([d[1] for d in per_draw], axis=0)
    h_ndcg = np.mean([d[0] for d in human], axis=0)
    h_judged = np.mean([d[1] for d in human], axis=0)
    delta = ndcg - raw
    m, lo, hi = bootstrap_ci(ndcg.tolist())
    dm, dlo, dhi = bootstrap_ci(delta.tolist())
    return {
        "arm": name,
        "ndcg@10": {"mean": m, "lo": lo, "hi": hi},
        "judged@10": float(judged.mean()),
        "reliable": bool(judged.mean() >= MIN_JUDGED),
        "delta_vs_raw": {"mean": dm, "lo": dlo, "hi": dhi},
        "gains": int((delta > 1e-3).sum()),
        "losses": int((delta < -1e-3).sum()),
        "abstain": abstain,
        "human_only": {
            "ndcg@10": float(h_ndcg.mean()),
            "judged@10": float(h_judged.mean()),
            "delta_vs_raw": float((h_ndcg - raw_human).mean()),
        },
    }


def policy_answers(
    model_path: Path, prompt: PromptConfig, queries: Sequence[str], samples: int, seed: int
) -> tuple[list[str], list[list[str]]]:
    """(greedy additions, sampled additions per query); "" = abstain or unusable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.training.rollout import greedy_rollouts, sample_rollouts

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    greedy = greedy_rollouts(
        model, tokenizer, queries, max_new_tokens=prompt.max_tokens, prompt=prompt
    )
    sampled: list[list[str]] = [[] for _ in queries]
    if samples:
        chunk = 8
        for start in range(0, len(queries), chunk):
            part = list(queries[start : start + chunk])
            batch = sample_rollouts(
                model, tokenizer, part, group_size=samples, max_new_tokens=prompt.max_tokens,
                temperature=1.0, prompt=prompt, seed=seed + start,
            )  # fmt: skip
            for r in batch.rollouts:
                sampled[start + r.prompt_index].append(r.rewrite or "")
            console.print(f"  {prompt.version}: sampled {start + len(part)}/{len(queries)}")
    return [r.rewrite or "" for r in greedy], sampled


def run_split(
    name: str, examples: list[Example], human: dict[str, dict[str, float]], ranker: Ranker,
    retriever: Retriever, policies: dict[str, tuple[list[str], list[list[str]]]],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:  # fmt: skip
    targets = [ex.targets for ex in examples]
    h_targets = [human.get(ex.key, {}) for ex in examples]
    n = len(examples)
    rows: list[dict[str, Any]] = []
    terms = [title_terms(retriever, ranker, ex.query) for ex in examples]
    for entry in ENTRIES:
        console.print(f"[bold]{name}[/bold]: entry {entry}")
        raw = score(ranker, examples, [""] * n, entry, targets)
        raw_h = score(ranker, examples, [""] * n, entry, h_targets)

        def arm(
            label: str, draws: list[list[str]], abstain: float, entry: str = entry,
            raw: Any = raw, raw_h: Any = raw_h,
        ) -> None:  # fmt: skip
            per = [score(ranker, examples, d, entry, targets) for d in draws]
            per_h = [score(ranker, examples, d, entry, h_targets) for d in draws]
            row = summarize(label, per, raw[0], per_h, raw_h[0], abstain)
            rows.append({"split": name, "entry": entry, "queries": n, **row})

        arm("raw", [[""] * n], 1.0)
        # oracle: per query the best single term under the (completed) grades, or none
        best: list[str] = []
        for ex, ts, t in zip(examples, terms, targets, strict=True):
            vals = score(ranker, [ex] * len(ts), ts, entry, [t] * len(ts))[0] if ts else []
            i = int(np.argmax(vals)) if len(vals) else -1
            best.append(ts[i] if i >= 0 and vals[i] > ndcg_at_k(
                ranker.rank([(ex.query, "")], entry)[0], t, 10) + 1e-9 else "")  # fmt: skip
        arm("oracle term or none", [best], float(np.mean([b == "" for b in best])))
        forced = []
        for ex, ts, t in zip(examples, terms, targets, strict=True):
            vals = score(ranker, [ex] * len(ts), ts, entry, [t] * len(ts))[0] if ts else []
            forced.append(ts[int(np.argmax(vals))] if len(vals) else "")
        arm("oracle term (always)", [forced], float(np.mean([f == "" for f in forced])))
        randoms = [[ts[rng.integers(len(ts))] if ts else "" for ts in terms] for _ in range(3)]
        arm("random title term", randoms, 0.0)
        for version, (greedy, sampled) in policies.items():
            arm(f"{version} greedy", [greedy], float(np.mean([g == "" for g in greedy])))
            if sampled and sampled[0]:
                draws = [list(d) for d in zip(*sampled, strict=True)]
                abst = float(np.mean([a == "" for s in sampled for a in s]))
                arm(f"{version} sample mean", draws, abst)
                pick = []
                for ex, s, t in zip(examples, sampled, targets, strict=True):
                    options = ["", *dict.fromkeys(a for a in s if a)]
                    vals = score(ranker, [ex] * len(options), options, entry, [t] * len(options))[0]
                    pick.append(options[int(np.argmax(vals))])
                arm(
                    f"{version} best sample or none",
                    [pick],
                    float(np.mean([p == "" for p in pick])),
                )
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(7 * len(splits), 6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        sub = [r for r in rows if r["split"] == split and r["arm"] != "raw"]
        arms = list(dict.fromkeys(r["arm"] for r in sub))
        for j, entry in enumerate(ENTRIES):
            vals = {r["arm"]: r["delta_vs_raw"] for r in sub if r["entry"] == entry}
            y = np.arange(len(arms)) + (j - 1) * 0.27
            m = [vals[a]["mean"] for a in arms]
            err = [[vals[a]["mean"] - vals[a]["lo"] for a in arms],
                   [vals[a]["hi"] - vals[a]["mean"] for a in arms]]  # fmt: skip
            ax.barh(y, m, height=0.25, xerr=err, label=entry, capsize=2)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(np.arange(len(arms)), arms, fontsize=8)
        ax.set_xlabel("Δ NDCG@10 vs raw query (human + assessed grades), 95% CI")
        ax.set_title(f"Chorus {split}")
        ax.legend(title="additions enter as")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-policy", action="store_true", help="Term arms only (no model).")
    ap.add_argument("--samples", type=int, default=8, help="Samples per query per prompt.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--titles", type=int, default=5, help="Titles a grounded prompt shows.")
    ap.add_argument("--out", type=Path, default=OUT / "grounding.json")
    args = ap.parse_args()
    started = time.time()
    settings = get_settings()
    retriever = load_retriever(settings)
    examples = restrict_to_index(load_examples(str(CHORUS)), retriever.row_of)
    human = {e.key: e.targets for e in load_examples(str(CHORUS), grades=GradeSet.human)}
    train, val = split_examples(examples, 0.3, 0)
    ranker = Ranker(retriever)
    policies: dict[str, dict[str, tuple[list[str], list[list[str]]]]] = {"train": {}, "val": {}}
    if not args.no_policy:
        model_path = policy_model_path(settings)
        grounder = TitleGrounder(retriever, n=args.titles)
        grounder.prefetch([ex.query for ex in examples])
        for prompt in (DEFAULT_PROMPT, GROUNDED_PROMPT.with_grounder(grounder)):
            for split, exs in (("train", train), ("val", val)):
                console.print(f"{prompt.version}: {split} ({len(exs)} queries)")
                policies[split][prompt.version] = policy_answers(
                    model_path, prompt, [ex.query for ex in exs], args.samples, args.seed
                )
    rng = np.random.default_rng(args.seed)
    rows = [
        *run_split("train", train, human, ranker, retriever, policies["train"], rng),
        *run_split("val", val, human, ranker, retriever, policies["val"], rng),
    ]
    table = Table(title="Δ NDCG@10 vs raw (human + assessed grades)")
    for col in ("split", "entry", "arm", "NDCG@10", "judged@10", "Δ [95% CI]", "+/−", "abstain"):
        table.add_column(col)
    for r in rows:
        d = r["delta_vs_raw"]
        table.add_row(
            r["split"], r["entry"], r["arm"], f"{r['ndcg@10']['mean']:.3f}",
            f"{r['judged@10']:.2f}", f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
            f"{r['gains']}/{r['losses']}", f"{r['abstain']:.2f}",
        )  # fmt: skip
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "bench/grounding.py" + (" --no-policy" if args.no_policy else ""),
        "grades": "human + assessed (human_only: human grades alone)",
        "split": {"val_fraction": 0.3, "seed": 0, "train": len(train), "val": len(val)},
        "index_version": retriever.version,
        "titles_shown": args.titles,
        "samples": args.samples,
        "seconds": time.time() - started,
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "rows": rows,
        "answers": {
            split: {
                v: {"greedy": dict(zip([e.query for e in exs], g, strict=True))}
                for v, (g, _) in pol.items()
            }
            for split, pol, exs in (
                ("train", policies["train"], train),
                ("val", policies["val"], val),
            )
        },
    }
    args.out.write_text(json.dumps(report, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    console.print(f"written {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
