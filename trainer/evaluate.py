"""Offline evaluation of rewrite policies: NDCG@10, recall@10/50, MRR with bootstrap 95% CIs.

A policy is "raw" (search with the shopper's query, no rewrite), "base" (greedy rewrites of the
base model) or an adapter folder (greedy rewrites of base + LoRA). Unusable completions fall
back to the raw query, as serving does. Every policy's search texts are scored with:

* ``dense``        — the full index (embedder + FAISS), what serving and training use;
* ``dense_pooled`` — the same embeddings ranked inside each query's judged products only;
* ``bm25``         — BM25 over the products' search text (``bm25s``), a retriever the policy
                     never saw in training: does the rewrite help beyond the training reward?

Relevant = gain > 0 (recall, MRR); NDCG uses graded gains. Intervals are percentile bootstraps
over queries; ``delta_vs_raw`` is the paired per-query difference to the raw query.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from service.retrieval.index import Retriever
from service.retrieval.metrics import bootstrap_ci, ndcg_at_k, recall_at_k, reciprocal_rank
from trainer.data import Example
from trainer.reward import RewardModel

DEPTH = 100  # results kept per query (MRR looks this deep)
METRICS = ("ndcg@10", "recall@10", "recall@50", "mrr")


class BM25Retriever:
    """Lexical retriever over product texts (English stopwords, no stemming)."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        if len(ids) != len(texts) or not ids:
            raise ValueError("BM25 needs one text per product id, and at least one product")
        self.ids = list(ids)
        self._bm25s = bm25s
        self.model = bm25s.BM25()
        self.model.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                         show_progress=False)  # fmt: skip

    def search_ids_many(self, texts: Sequence[str], k: int) -> list[list[str]]:
        if not texts:
            return []
        k = min(k, len(self.ids))
        tokens = self._bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
        rows, scores = self.model.retrieve(tokens, k=k, show_progress=False)  # (B, k) each
        return [
            [self.ids[r] for r, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(rows.tolist(), scores.tolist(), strict=True)
        ]


def query_metrics(ranked: Sequence[str], targets: Mapping[str, float]) -> dict[str, float]:
    return {
        "ndcg@10": ndcg_at_k(ranked, targets, 10),
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.rollout import greedy_rollouts

    if model_path is None:
        raise ValueError("a model path is needed to generate rewrites")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if policy != "base":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolve_adapter(Path(policy)))
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

    def summary(self, raw: PolicyEval | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"parse_rate": self.parse_rate, "seconds": self.seconds}
        for name, metrics in self.per_query.items():
            out[name] = {m: summarize(v) for m, v in metrics.items()}
            if raw is not None and raw is not self and name in raw.per_query:
                diff = np.subtract(metrics["ndcg@10"], raw.per_query[name]["ndcg@10"])
                out[name]["delta_ndcg@10_vs_raw"] = summarize(diff.tolist())
        return out


def score_texts(
    texts: Sequence[str],
    examples: Sequence[Example],
    retriever: Retriever,
    bm25: BM25Retriever | None = None,
    pooled: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """retriever name -> metric -> per-query values, for search texts aligned with examples."""
    targets = {ex.key: ex.targets for ex in examples}
    pairs = [(t, ex.key) for t, ex in zip(texts, examples, strict=True)]
    rankers: dict[str, list[list[str]]] = {
        "dense": RewardModel(retriever, targets, depth=DEPTH).rankings(pairs)
    }
    if pooled:
        rankers["dense_pooled"] = RewardModel(
            retriever, targets, depth=DEPTH, mode="pooled"
        ).rankings(pairs)
    if bm25 is not None:
        rankers["bm25"] = bm25.search_ids_many(list(texts), DEPTH)
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
    bm25: BM25Retriever | None = None,
    pooled: bool = True,
    max_new_tokens: int = DEFAULT_PROMPT.max_tokens,
    batch_size: int = 16,
    prompt: PromptConfig = DEFAULT_PROMPT,
) -> dict[str, Any]:
    """The full report: per policy and retriever, each metric's mean and 95% CI."""
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
            per_query=score_texts(texts, examples, retriever, bm25, pooled),
            seconds=time.perf_counter() - started,
        )
    raw = evals.get("raw")
    return {
        "n_queries": len(examples),
        "index_version": retriever.version,
        "prompt_version": prompt.version,
        "policies": {name: e.summary(raw) for name, e in evals.items()},
        "rewrites": {
            name: [{"query": q, "text": t} for q, t in zip(queries, e.texts, strict=True)]
            for name, e in evals.items()
        },
        "per_query": {name: e.per_query for name, e in evals.items()},
    }


def bm25_for(retriever: Retriever, texts: Mapping[str, str]) -> BM25Retriever:
    """BM25 over the products of ``retriever`` (its titles where no search text is known)."""
    return BM25Retriever(
        retriever.ids,
        [
            texts.get(pid) or title
            for pid, title in zip(retriever.ids, retriever.titles, strict=True)
        ],
    )
