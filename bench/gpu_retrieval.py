"""The retrieval reward on the GPU and its cost at scale (bench/gpu_step.py, section 2).

``RetrievalEngine``: an encoder, exact top-k over a synthetic catalogue of random unit vectors
(``torch.topk`` of ``q @ P.T``, what faiss-gpu flat does) and NDCG@k against per-query graded
targets; ``ValueCache`` values each distinct text once. ``retrieval_scaling`` times one step's
coalition texts valued one by one, batched, and batched with the cache, per catalogue size.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import gpu_run
import numpy as np
import torch
from gpu_models import ADJECTIVES, PHRASES, QUERIES
from gpu_run import error_record, free_memory, over_budget, peak_gib, r, reset_peak, sync, write
from harness import timing
from transformers import BertModel, PreTrainedTokenizerFast

from trainer.method.attribution import attribute, attribute_batch


class ValueCache:
    """Text -> its top-k product ids: every distinct text is embedded and searched once."""

    def __init__(self) -> None:
        self.topk: dict[str, np.ndarray] = {}


class RetrievalEngine:
    """v(text, query) = NDCG@k of retrieving with ``text`` against ``query``'s graded targets."""

    def __init__(
        self,
        encoder: BertModel,
        tokenizer: PreTrainedTokenizerFast,
        n_products: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.encoder, self.tokenizer, self.device = encoder, tokenizer, device
        self.k = gpu_run.ARGS.config.reward_k
        self.dim = int(encoder.config.hidden_size)
        g = torch.Generator(device=device).manual_seed(seed)
        cat = torch.randn(n_products, self.dim, generator=g, device=device)
        self.catalog = torch.nn.functional.normalize(cat, dim=-1)  # (N, d) float32
        self.discount = 1.0 / np.log2(np.arange(2, self.k + 2))  # (k,)
        self.stats: Counter[str] = Counter()
        self._set_targets(np.random.default_rng(seed))

    def _set_targets(self, rng: np.random.Generator) -> None:
        """Per query: half the targets among its 50 nearest products, half random; gains 1..3."""
        n = self.catalog.shape[0]
        near = self.search(self.embed(list(QUERIES)), k=min(50, n))
        m = max(2, gpu_run.ARGS.targets_per_query // 2)
        gains = np.zeros((len(QUERIES), n), dtype=np.float32)
        for q in range(len(QUERIES)):
            ids = np.concatenate(
                [
                    rng.choice(near[q], size=min(m, near.shape[1]), replace=False),
                    rng.integers(0, n, size=m),
                ]
            )
            gains[q, ids] = rng.integers(1, 4, size=len(ids))
        ideal = -np.sort(-gains, axis=1)[:, : self.k]
        self.gains = gains  # (Q, N) dense: cheap lookups gains[q, topk]
        self.idcg = ideal @ self.discount  # (Q,)
        self.stats.clear()

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) float32 L2-normalised mean-pooled embeddings, in batches of --embed-batch."""
        out = []
        for a in range(0, len(texts), gpu_run.ARGS.embed_batch):
            t0 = time.perf_counter()
            enc = self.tokenizer(
                list(texts[a : a + gpu_run.ARGS.embed_batch]),
                padding=True,
                truncation=True,
                max_length=gpu_run.ARGS.embed_max_length,
                return_tensors="pt",
            )
            t1 = time.perf_counter()
            ids = enc["input_ids"].to(self.device, non_blocking=True)
            mask = enc["attention_mask"].to(self.device, non_blocking=True)
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
            self.stats["tokenize_s"] += t1 - t0
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)

    @torch.inference_mode()
    def search(self, emb: torch.Tensor, k: int | None = None) -> np.ndarray:
        """(n, k) int64 ids of the top-k products by inner product, exact, rows chunked."""
        k = self.k if k is None else k
        rows = max(1, (1 << 28) // self.catalog.shape[0])  # <= 1 GiB of fp32 scores at a time
        parts = []
        for a in range(0, emb.shape[0], rows):
            scores = emb[a : a + rows] @ self.catalog.T
            parts.append(torch.topk(scores, k, dim=1).indices)
        if not parts:
            return np.zeros((0, k), dtype=np.int64)
        return torch.cat(parts).cpu().numpy()

    def score(self, topk: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """NDCG@k, linear gains, log2(rank+1) discount; 0 when a query has no positive target."""
        dcg = self.gains[ctx[:, None], topk] @ self.discount
        return np.divide(dcg, self.idcg[ctx], out=np.zeros_like(dcg), where=self.idcg[ctx] > 0)

    def _timed_topk(self, texts: Sequence[str]) -> np.ndarray:
        t0 = time.perf_counter()
        emb = self.embed(texts)
        sync(self.device)
        t1 = time.perf_counter()
        topk = self.search(emb)
        t2 = time.perf_counter()
        self.stats["embed_s"] += t1 - t0
        self.stats["search_s"] += t2 - t1
        self.stats["texts_embedded"] += len(texts)
        self.stats["calls"] += 1
        return topk

    def values(self, pairs: Sequence[tuple[str, int]], cache: ValueCache | None) -> np.ndarray:
        """Values of (text, query index) pairs; with a cache each distinct text costs once."""
        if not pairs:
            return np.zeros(0)
        texts = [t for t, _ in pairs]
        ctx = np.asarray([c for _, c in pairs], dtype=np.int64)
        if cache is None:
            topk = self._timed_topk(texts)
        else:
            new = [t for t in dict.fromkeys(texts) if t not in cache.topk]
            if new:
                cache.topk.update(zip(new, self._timed_topk(new), strict=True))
            topk = np.stack([cache.topk[t] for t in texts])
        t0 = time.perf_counter()
        out = self.score(topk, ctx)
        self.stats["score_s"] += time.perf_counter() - t0
        self.stats["pairs_valued"] += len(pairs)
        return out


def synthetic_rewrite(query: str, rng: np.random.Generator) -> str:
    """A plausible expanded query: 0-2 adjectives + query + 1-5 attribute phrases."""
    adjs = rng.choice(ADJECTIVES, size=int(rng.integers(0, 3)), replace=False).tolist()
    extra = rng.choice(PHRASES, size=int(rng.integers(1, 6)), replace=False).tolist()
    return " ".join([*adjs, query]) + ", " + ", ".join(extra)


def requested_coalitions(
    items: Sequence[tuple[str, int]], seed: int
) -> tuple[list[tuple[str, int]], list[int]]:
    """Every coalition text each rollout's estimator asks for (distinct within a rollout)."""
    parent = np.random.default_rng(seed)
    out: list[tuple[str, int]] = []
    players: list[int] = []
    for text, c in items:
        seen: list[str] = []

        def record(texts: list[str], seen: list[str] = seen) -> np.ndarray:
            seen.extend(texts)
            return np.zeros(len(texts))

        rng = np.random.default_rng(int(parent.integers(0, 2**63 - 1)))
        res = attribute(text, record, rng=rng, **gpu_run.ARGS.config.attribution_kwargs())
        players.append(len(res.segments))
        out.extend((t, c) for t in seen)
    return out, players


def best_of(fn: Any, repeats: int, device: torch.device) -> float:
    return timing.best_of(fn, repeats, sync=lambda: sync(device))


def measure_workload(
    engine: RetrievalEngine, prompts: int, obo_rate: float, device: torch.device
) -> dict[str, Any]:
    """Value one step's coalitions (P prompts × G realistic rewrites) three ways."""
    config = gpu_run.ARGS.config
    rng = np.random.default_rng(config.seed + prompts)
    qs = [QUERIES[i % len(QUERIES)] for i in range(prompts)]
    items = [
        (synthetic_rewrite(q, rng), QUERIES.index(q)) for q in qs for _ in range(config.group_size)
    ]
    req, players = requested_coalitions(items, config.seed)
    out: dict[str, Any] = {
        "prompts": prompts,
        "rollouts": len(items),
        "players_mean": r(float(np.mean(players)), 2),
        "players_max": int(max(players)),
        "coalitions_requested": len(req),
        "distinct_pairs": len(set(req)),
        "distinct_texts": len({t for t, _ in req}),
    }
    engine.values(req[: gpu_run.ARGS.embed_batch], None)  # warm-up at full batch width
    for name, make_cache in (("batched", lambda: None), ("batched_text_cache", ValueCache)):
        engine.stats.clear()
        seconds = best_of(
            lambda mk=make_cache: engine.values(req, mk()), gpu_run.ARGS.repeats, device
        )
        out[name] = {
            "seconds": r(seconds),
            "texts_per_s": r(len(req) / seconds, 1),
            "speedup_vs_one_by_one": r(len(req) / seconds / obo_rate, 2),
            "per_run_mean": {k: r(v / gpu_run.ARGS.repeats) for k, v in engine.stats.items()},
        }

    # What the trainer runs: the estimators (CPU) around one batched, cached value call.
    def run_estimators(value_fn: Any) -> None:
        attribute_batch(
            items, value_fn, rng=np.random.default_rng(0), **config.attribution_kwargs()
        )

    est_s = best_of(lambda: run_estimators(lambda pairs: np.zeros(len(pairs))), 1, device)
    e2e_s = best_of(
        lambda: run_estimators(lambda pairs: engine.values(pairs, ValueCache())),
        gpu_run.ARGS.repeats,
        device,
    )
    out["attribute_batch"] = {
        "estimators_only_s": r(est_s),
        "end_to_end_s": r(e2e_s),
        "one_by_one_estimate_s": r(len(req) / obo_rate + est_s, 3),
    }
    return out


def measure_catalog(engine: RetrievalEngine, device: torch.device) -> dict[str, Any]:
    rec: dict[str, Any] = {"status": "ok", "catalog_size": int(engine.catalog.shape[0])}
    # One by one: per-text speed does not depend on how many rollouts there are.
    items = [
        (synthetic_rewrite(q, np.random.default_rng(i)), QUERIES.index(q))
        for i, q in enumerate(QUERIES)
    ]
    sample = requested_coalitions(items, gpu_run.ARGS.config.seed)[0][
        : gpu_run.ARGS.one_by_one_sample
    ]
    for pair in sample[:4]:  # warm-up
        engine.values([pair], None)

    def one_by_one() -> None:
        for pair in sample:
            engine.values([pair], None)
            sync(device)

    obo_s = best_of(one_by_one, gpu_run.ARGS.repeats, device)
    obo_rate = len(sample) / obo_s
    rec["one_by_one"] = {
        "texts": len(sample),
        "seconds": r(obo_s),
        "texts_per_s": r(obo_rate, 1),
        "ms_per_text": r(1000 * obo_s / len(sample), 3),
    }
    rec["workloads"] = []
    for prompts in gpu_run.ARGS.scale_prompts:
        if over_budget():
            rec["workloads"].append({"prompts": prompts, "status": "skipped"})
            continue
        rec["workloads"].append(measure_workload(engine, prompts, obo_rate, device))
    rec["peak_memory_gib"] = peak_gib(device)
    return rec


def retrieval_scaling(encoder: BertModel, etok: PreTrainedTokenizerFast, state: dict) -> None:
    device = gpu_run.DEVICE
    for n_products in gpu_run.ARGS.scale_catalog_sizes:
        key = f"catalog_{n_products}"
        if over_budget():
            state["retrieval"][key] = {"status": "skipped", "reason": "time budget spent"}
            continue
        try:
            free_memory(device)
            reset_peak(device)
            engine = RetrievalEngine(
                encoder, etok, n_products, device, seed=gpu_run.ARGS.config.seed + 7
            )
            state["retrieval"][key] = measure_catalog(engine, device)
            del engine
        except Exception as exc:
            state["retrieval"][key] = dict(error_record(exc), catalog_size=n_products)
        free_memory(device)
        write(state)
        print(
            f"[{gpu_run.elapsed():6.1f}s] retrieval {key}: {state['retrieval'][key]['status']}",
            flush=True,
        )
