"""Offline evaluation of rewrite policies: NDCG@10, recall@10/50, MRR with bootstrap 95% CIs.

A policy is "raw" (search with the shopper's query, no rewrite), "base" (greedy rewrites of the
base model) or an adapter folder (greedy rewrites of base + LoRA). Unusable completions fall
back to the raw query, as serving does. Every policy's search texts are scored with each
retrieval mode of the index version (``service.retrieval``):

* ``hybrid``  — dense and lexical arms fused: what serving and training use by default;
* ``dense``   — embeddings + FAISS only;
* ``lexical`` — BM25 only.

A policy trained against hybrid and scored on dense or lexical alone is the unseen-retriever
check: does the rewrite help beyond the retriever of its reward? ``pooled`` adds
``hybrid_pooled``: the default mode ranked inside each query's judged products only.

Relevant = gain > 0 (recall, MRR); NDCG uses graded gains. judged@10 is the share of the top 10
with any grade: grades are human + assessed by default (``service.grades``), and a retriever's
result whose mean judged@10 is below ``MIN_JUDGED`` carries ``reliable: false``. Intervals are
percentile bootstraps over queries; ``delta_vs_raw`` is the paired per-query difference to the
raw query.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.domain import ExpansionEntry, RetrievalMode
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig, RewriteMode
from service.retrieval.index import Retriever
from service.retrieval.metrics import (
    MIN_JUDGED,
    bootstrap_ci,
    judged_at_k,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)
from trainer.training.data import Example
from trainer.training.reward import RewardModel

DEPTH = 100  # results kept per query (MRR looks this deep)
TIE = 1e-3  # |Δ NDCG@10| below this is neither a gain nor a loss
METRICS = ("ndcg@10", "judged@10", "recall@10", "recall@50", "mrr")


def query_metrics(ranked: Sequence[str], targets: Mapping[str, float]) -> dict[str, float]:
    return {
        "ndcg@10": ndcg_at_k(ranked, targets, 10),
        "judged@10": judged_at_k(ranked, targets, 10),
        "recall@10": recall_at_k(ranked, targets, 10),
        "recall@50": recall_at_k(ranked, targets, 50),
        "mrr": reciprocal_rank(ranked, targets),
    }


def summarize(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi}


# ---------------------------------------------------------------------------------------------
# Rewrites
# ---------------------------------------------------------------------------------------------


def resolve_adapter(path: Path) -> Path:
    """An adapter folder, or a training run folder holding one under ``adapter/``."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    raise FileNotFoundError(f"{path} is neither a peft adapter folder nor a training run folder")


def policy_rewrites(
    policy: str,
    queries: Sequence[str],
    model_path: Path | None,
    *,
    max_new_tokens: int = DEFAULT_PROMPT.max_tokens,
    batch_size: int = 16,
    prompt: PromptConfig = DEFAULT_PROMPT,
) -> tuple[list[str], list[bool]]:
    """(search texts, usable-rewrite flags) for ``policy`` = raw | base | ADAPTER_DIR."""
    if policy == "raw":
        return list(queries), [False] * len(queries)
    from trainer.training.device import resolve_placement
    from trainer.training.policy import load_base
    from trainer.training.rollout import greedy_rollouts

    if model_path is None:
        raise ValueError("a model path is needed to generate rewrites")
    placement = resolve_placement()  # the training device and dtype (auto), as training loads
    tokenizer, model = load_base(model_path, placement)
    if policy != "base":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolve_adapter(Path(policy)))
    model = model.to(placement.device)
    rollouts = greedy_rollouts(
        model, tokenizer, queries, max_new_tokens=max_new_tokens, batch_size=batch_size,
        prompt=prompt,
    )  # fmt: skip
    return [r.search_text for r in rollouts], [r.rewrite is not None for r in rollouts]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class PolicyEval:
    policy: str
    texts: list[str]
    parse_rate: float
    per_query: dict[str, dict[str, list[float]]]  # retriever -> metric -> (n_queries,)
    seconds: float
    abstain: float  # share of queries searched with the raw query (NONE or unusable)

    def summary(self, raw: PolicyEval | None = None) -> dict[str, Any]:
        """Per retriever: each metric's mean and CI, ``reliable``; against ``raw``: the paired
        Δ NDCG@10 and how many queries gain / lose more than ``TIE`` (an abstaining policy
        neither gains nor loses). ``abstain``: share of queries searched with the raw query."""
        out: dict[str, Any] = {
            "parse_rate": self.parse_rate, "abstain": self.abstain, "seconds": self.seconds,
        }  # fmt: skip
        for name, metrics in self.per_query.items():
            out[name] = {m: summarize(v) for m, v in metrics.items()}
            out[name]["reliable"] = bool(np.mean(metrics["judged@10"]) >= MIN_JUDGED)
            if raw is not None and raw is not self and name in raw.per_query:
                diff = np.subtract(metrics["ndcg@10"], raw.per_query[name]["ndcg@10"])
                out[name]["delta_ndcg@10_vs_raw"] = summarize(diff.tolist())
                out[name]["gains"] = int((diff > TIE).sum())
                out[name]["losses"] = int((diff < -TIE).sum())
        return out


def available_modes(retriever: Retriever) -> tuple[RetrievalMode, ...]:
    """The retrieval modes this index version can score (all three when it has both arms)."""
    if retriever.lexical is None:
        return (RetrievalMode.dense,)
    return (RetrievalMode.hybrid, RetrievalMode.dense, RetrievalMode.lexical)


def score_texts(
    texts: Sequence[str],
    examples: Sequence[Example],
    retriever: Retriever,
    modes: Sequence[RetrievalMode] | None = None,
    pooled: bool = False,
    entry: ExpansionEntry = ExpansionEntry.concat,
) -> dict[str, dict[str, list[float]]]:
    """retriever name -> metric -> per-query values, for search texts aligned with examples
    (additions entering retrieval as ``entry`` says: trainer/training/reward.py)."""
    targets = {ex.key: ex.targets for ex in examples}
    queries = {ex.key: ex.query for ex in examples}
    pairs = [(t, ex.key) for t, ex in zip(texts, examples, strict=True)]
    rankers: dict[str, list[list[str]]] = {
        str(mode): RewardModel(
            retriever, targets, depth=DEPTH, retrieval=mode, entry=entry, queries=queries
        ).rankings(pairs)
        for mode in (modes or available_modes(retriever))
    }
    if pooled:
        rankers[f"{retriever.mode}_pooled"] = RewardModel(
            retriever, targets, depth=DEPTH, mode="pooled"
        ).rankings(pairs)
    out: dict[str, dict[str, list[float]]] = {}
    for name, rankings in rankers.items():
        rows = [query_metrics(r, ex.targets) for r, ex in zip(rankings, examples, strict=True)]
        out[name] = {m: [row[m] for row in rows] for m in METRICS}
    return out


def evaluate_policies(
    policies: Sequence[str],
    examples: Sequence[Example],
    retriever: Retriever,
    model_path: Path | None,
    *,
    modes: Sequence[RetrievalMode] | None = None,
    pooled: bool = False,
    max_new_tokens: int = DEFAULT_PROMPT.max_tokens,
    batch_size: int = 16,
    prompt: PromptConfig = DEFAULT_PROMPT,
    entry: ExpansionEntry = ExpansionEntry.concat,
) -> dict[str, Any]:
    """The full report: per policy and retriever, each metric's mean and 95% CI; a
    replacing prompt's rewrites are searched as they are, whatever ``entry``."""
    if prompt.mode != RewriteMode.expand:
        entry = ExpansionEntry.concat
    if not examples:
        raise ValueError("no evaluation examples")
    queries = [ex.query for ex in examples]
    evals: dict[str, PolicyEval] = {}
    for policy in policies:
        started = time.perf_counter()
        texts, ok = policy_rewrites(
            policy, queries, model_path, max_new_tokens=max_new_tokens, batch_size=batch_size,
            prompt=prompt,
        )  # fmt: skip
        evals[policy] = PolicyEval(
            policy=policy,
            texts=texts,
            parse_rate=float(np.mean(ok)) if policy != "raw" else 1.0,
            per_query=score_texts(texts, examples, retriever, modes, pooled, entry),
            seconds=time.perf_counter() - started,
            abstain=float(np.mean([t == q for t, q in zip(texts, queries, strict=True)])),
        )
    raw = evals.get("raw")
    return {
        "n_queries": len(examples),
        "index_version": retriever.version,
        "prompt_version": prompt.version,
        "expansion_entry": str(entry),
        "policies": {name: e.summary(raw) for name, e in evals.items()},
        "rewrites": {
            name: [{"query": q, "text": t} for q, t in zip(queries, e.texts, strict=True)]
            for name, e in evals.items()
        },
        "per_query": {name: e.per_query for name, e in evals.items()},
    }
