"""GPU benchmark: one OSPO / GRPO training step, and the retrieval reward path at scale.

Writes ``bench/results/gpu_step.json`` (``--tiny``: ``bench/results/tmp/gpu_step_tiny.json``)
and prints it. Made for the lent GPU machine (DESIGN.md §6): PyTorch, transformers and peft,
but no vLLM, no faiss, no model weights and no network. It imports only the standard library,
numpy, torch, transformers, peft and the project's pure ``trainer.attribution`` /
``trainer.ospo``; tokenizers come from files carried in ``bench/gpu_assets/`` (SmolLM2-135M-
Instruct's and all-MiniLM-L6-v2's tokenizer files, both Apache-2.0).

Run on the GPU machine:   python bench/gpu_step.py
CPU smoke test (minutes): .venv/bin/python bench/gpu_step.py --tiny

What is measured, in this order (the most valuable numbers first, so a time budget that runs
out still leaves them): Qwen2.5-1.5B GRPO, 1.5B OSPO, 7B GRPO, 7B OSPO, then the retrieval path.

1. One training step, phase by phase (``torch.cuda.synchronize`` around each):
   generate (``model.generate``, P prompts × G samples, temperature 1.0, pure sampling) ·
   old_logprobs (log-softmax of the sampling logits ``generate`` returned, or a no-grad
   forward with ``--old-logprobs forward``) · decode (completion text and per-token character
   offsets) · reward (NDCG@k of retrieving with each rollout's text, one batched embed + search)
   · attribution (OSPO only: every coalition text of every rollout of the step valued in one
   batched call through ``trainer.attribution.attribute_batch``) · advantages (GRPO: A_g on
   every token; OSPO: ``trainer.ospo.group_token_advantages``) · update (forward, clipped
   surrogate loss, backward over micro-batches, grad-norm clip, AdamW step on the LoRA weights).
   One untimed warm-up step per (model, algorithm) precedes ``--steps`` timed ones.
2. The reward path alone with realistic rewrites (hard-coded phrase templates): coalition texts
   per second valued one by one (one embed + one search per text, as a naive per-coalition
   implementation would), batched (all coalition texts of a step, duplicates included), and
   batched with the text cache (each distinct text embedded and searched once), per catalogue
   size; plus the CPU cost of the estimators themselves.

What is and is not representative (numbers are about speed and memory, never quality):
* Policies are Qwen2.5 architectures (``Qwen2Config`` with the published sizes) with RANDOM
  weights in bf16, LoRA r=32 α=16 on all linear projections. Throughput and memory do not
  depend on the weight values. The vocabulary is the carried SmolLM2 tokenizer's (49,152
  tokens) instead of Qwen's 151,936, so prompts are encoded and samples decoded by a real
  tokenizer; that removes ~0.16B parameters from the tied 1.5B embedding and ~0.74B from the
  untied 7B embedding + LM head, and shrinks the logits. ``--vocab-size 151936`` restores the
  real size (ids >= 49,152 are then decoded modulo 49,152).
* Random weights sample near-uniform token salad, so completions usually run to
  ``max_new_tokens`` and decode to word soup. The whole decoded completion is taken as the
  rewrite (no tag parsing), so OSPO attributes ~``max_new_tokens`` tokens' worth of phrases —
  typically more players than a real short rewrite, so sampled Owen with the full budget runs
  more often than in production; the retrieval section uses realistic rewrites instead.
* Reward: an all-MiniLM-L6-v2-architecture encoder (BertModel from the carried config.json,
  random weights, mean pooling, L2 norm) and a synthetic catalogue of random unit vectors on
  the GPU; retrieval is ``torch.topk`` of ``q @ P.T`` (exact search, what faiss-gpu flat does);
  NDCG@10 with linear gains against per-query graded targets (half drawn near the query's own
  embedding so some rewards are non-zero, half random). Reward values are meaningless; their
  cost is real.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from trainer.attribution import attribute, attribute_batch  # noqa: E402
from trainer.ospo import (  # noqa: E402
    AdvantageConfig,
    clipped_surrogate_loss,
    group_token_advantages,
    grpo_advantages,
    pad_advantages,
)

ASSETS = ROOT / "bench" / "gpu_assets"
RESULTS = ROOT / "bench" / "results"
OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    torch.cuda.OutOfMemoryError,
)
GIB = 1024**3

# Queries from the Chorus electronics judgments (data/chorus_icecat): what shoppers typed.
QUERIES = (
    "laptop",
    "wireless headphones",
    "earbuds",
    "bluetooth speaker",
    "gaming mouse",
    "external hard drive",
    "hdmi cable",
    "phone charger",
    "micro sd card",
    "laptop bag",
    "power bank",
    "usb hub",
    "smart watch",
    "laser printer",
    "rechargeable batteries",
    "ipad stand",
)
# Phrases the realistic synthetic rewrites are built from (retrieval section).
ADJECTIVES = ("wireless", "portable", "black", "usb c", "compact", "rgb", "waterproof", "slim")
PHRASES = (
    "with charging case",
    "fast charging",
    "2 pack",
    "noise cancelling",
    "for laptop and tablet",
    "high speed",
    "lightweight and durable",
    "long battery life",
    "for iphone and android",
    "1tb storage",
    "with usb c cable",
    "ergonomic design",
    "4k hdr",
    "bluetooth 5.3",
    "under 50 dollars",
    "for travel",
)
SYSTEM_PROMPT = (
    "You rewrite online shop search queries. Expand the shopper's query into a better product "
    "search query: keep every word of the query, add the product type, key attributes and "
    "common synonyms. Reply with the rewritten query only, on one line."
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Published Qwen2.5 sizes: hidden, intermediate, layers, attention heads, KV heads, tied.
QWEN25 = {
    "0.5b": (896, 4864, 24, 14, 2, True),
    "1.5b": (1536, 8960, 28, 12, 2, True),
    "3b": (2048, 11008, 36, 16, 2, True),
    "7b": (3584, 18944, 28, 28, 4, False),
}
# --tiny: same code paths, CPU-sized shapes.
TINY = {
    "0.5b": (64, 128, 2, 4, 2, True),
    "1.5b": (64, 128, 2, 4, 2, True),
    "3b": (96, 192, 2, 6, 2, True),
    "7b": (96, 192, 2, 6, 2, False),
}
TOKENIZER_VOCAB = 49152  # SmolLM2's vocabulary, the carried policy tokenizer
EOS_ID = 2  # <|im_end|>, also the pad id


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Phases:
    """Wall seconds (synchronised) and peak allocated GPU memory of named phases of a step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, float | None] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync(self.device)
        reset_peak(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.peak[name] = peak_gib(self.device)


def error_record(exc: BaseException) -> dict[str, str]:
    kind = "oom" if isinstance(exc, OOM_ERRORS) else "error"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": kind, "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": tb[-3000:]}


def r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


# ---------------------------------------------------------------------------------------------
# Tokenizers (carried files; PreTrainedTokenizerFast works across transformers 4.x and 5.x)
# ---------------------------------------------------------------------------------------------


def policy_tokenizer() -> PreTrainedTokenizerFast:
    d = ASSETS / "smollm2"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = (d / "chat_template.jinja").read_text()
    tok.padding_side = "left"
    return tok


def encoder_tokenizer() -> PreTrainedTokenizerFast:
    special = json.loads((ASSETS / "minilm" / "special_tokens_map.json").read_text())
    return PreTrainedTokenizerFast(
        tokenizer_file=str(ASSETS / "minilm" / "tokenizer.json"), **special
    )


# ---------------------------------------------------------------------------------------------
# Models from configs, random weights
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_policy(
    name: str, tiny: bool, vocab_size: int, device: torch.device, dtype: torch.dtype
) -> tuple[Any, dict[str, Any]]:
    """Qwen2.5-``name`` architecture with random weights, LoRA on all linear projections."""
    hidden, inter, layers, heads, kv, tied = (TINY if tiny else QWEN25)[name]
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        use_cache=True,
        attn_implementation=ARGS.attn_implementation,
    )
    with default_dtype(dtype), torch.device(device):
        base = Qwen2ForCausalLM(cfg)
    base.eval()
    lora = LoraConfig(
        r=ARGS.lora_r,
        lora_alpha=ARGS.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    model.eval()
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {
        "hidden": hidden,
        "intermediate": inter,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv,
        "tied_embeddings": tied,
        "vocab_size": vocab_size,
        "params_total": n_total,
        "params_trainable": n_train,
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
    }
    return model, info


def build_encoder(tiny: bool, device: torch.device, dtype: torch.dtype) -> BertModel:
    """all-MiniLM-L6-v2 architecture (carried config.json), random weights, no pooler."""
    raw = json.loads((ASSETS / "minilm" / "config.json").read_text())
    keep = {k: v for k, v in raw.items() if not k.startswith("_") and k != "transformers_version"}
    if tiny:
        keep["num_hidden_layers"] = 2
    with default_dtype(dtype), torch.device(device):
        enc = BertModel(BertConfig(**keep), add_pooling_layer=False)
    return enc.eval()


# ---------------------------------------------------------------------------------------------
# Retrieval reward on the GPU: encoder + exact top-k over a synthetic catalogue + NDCG@k
# ---------------------------------------------------------------------------------------------


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
        self.k = ARGS.k
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
        m = max(2, ARGS.targets_per_query // 2)
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
        for a in range(0, len(texts), ARGS.embed_batch):
            t0 = time.perf_counter()
            enc = self.tokenizer(
                list(texts[a : a + ARGS.embed_batch]),
                padding=True,
                truncation=True,
                max_length=ARGS.embed_max_length,
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


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    sequences: torch.Tensor  # (B, Lp + T) prompt left-padded, completion right-padded
    attention: torch.Tensor  # (B, Lp + T) 1 on real prompt and completion tokens
    completion: torch.Tensor  # (B, T) sampled ids
    mask: torch.Tensor  # (B, T) bool, through the first EOS
    logits: tuple[torch.Tensor, ...] | None  # T × (B, V) raw sampling logits
    prompt_len: int


def prompt_batch(tok: PreTrainedTokenizerFast, queries: Sequence[str], device: torch.device):
    """Chat-template prompts, each repeated G times, left-padded: ids and mask (B, Lp)."""
    rows = []
    for q in queries:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Query: {q}\nRewritten query:"},
        ]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.extend([tok(text, add_special_tokens=False)["input_ids"]] * ARGS.group_size)
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), EOS_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, x in enumerate(rows):
        ids[b, width - len(x) :] = torch.tensor(x)
        mask[b, width - len(x) :] = 1
    return ids.to(device), mask.to(device)


def generate(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> Rollouts:
    want_logits = ARGS.old_logprobs == "generate"
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=ARGS.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=ARGS.max_new_tokens,
        pad_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        return_dict_in_generate=True,
        output_logits=want_logits,
        use_cache=True,
    )
    lp = ids.shape[1]
    completion = out.sequences[:, lp:]
    is_eos = completion == EOS_ID
    done_before = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    comp_mask = ~done_before
    attention = torch.cat([mask, comp_mask.long()], dim=1)
    logits = tuple(out.logits) if want_logits else None
    return Rollouts(out.sequences, attention, completion, comp_mask, logits, lp)


def token_logprobs(model: Any, ro: Rollouts, rows: slice) -> torch.Tensor:
    """(b, T) log softmax(logits / τ)[sampled token] for the completion positions of ``rows``."""
    seq, att = ro.sequences[rows], ro.attention[rows]
    t = ro.completion.shape[1]
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"input_ids": seq, "attention_mask": att, "position_ids": pos}
    if HAS_LOGITS_TO_KEEP:
        kwargs["logits_to_keep"] = t + 1
    logits = model(**kwargs, use_cache=False).logits
    logits = logits[:, -(t + 1) : -1]  # position i predicts token i + 1
    logp = torch.log_softmax(logits.float() / ARGS.temperature, dim=-1)
    return logp.gather(-1, ro.completion[rows].unsqueeze(-1)).squeeze(-1)


def decode(tok: PreTrainedTokenizerFast, ro: Rollouts) -> tuple[list[str], list[np.ndarray]]:
    """Completion texts (special tokens skipped) and (T_b, 2) character offsets per token.

    Offsets from decoding growing prefixes: token t spans [len(prefix_{t-1}), len(prefix_t)),
    empty when the prefix is not a prefix of the full text (split multi-byte characters).
    """
    texts, offsets = [], []
    lengths = ro.mask.sum(1).tolist()
    comp = ro.completion.cpu().numpy() % TOKENIZER_VOCAB
    for b, n in enumerate(lengths):
        ids = comp[b, :n].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        prefixes = tok.batch_decode([ids[: t + 1] for t in range(n)], skip_special_tokens=True)
        off = np.zeros((n, 2), dtype=np.int64)
        prev = 0
        for t, p in enumerate(prefixes):
            end = len(p) if len(p) >= prev and text.startswith(p) else prev
            off[t] = (prev, end)
            prev = end
        texts.append(text)
        offsets.append(off)
    return texts, offsets


def attribution_kwargs() -> dict[str, Any]:
    return {
        "segmentation": "phrase",
        "estimator": ARGS.estimator,
        "max_exact_players": ARGS.max_exact_players,
        "budget": ARGS.budget,
        "width": ARGS.width,
    }


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    tok: PreTrainedTokenizerFast,
    engine: RetrievalEngine,
    algo: str,
    step_seed: int,
) -> dict[str, Any]:
    device = ENGINE_DEVICE
    ph = Phases(device)
    P, G = ARGS.prompts, ARGS.group_size
    queries = [QUERIES[(step_seed * P + i) % len(QUERIES)] for i in range(P)]
    qidx = [QUERIES.index(q) for q in queries]
    ids, mask = prompt_batch(tok, queries, device)
    torch.manual_seed(step_seed)
    engine.stats.clear()
    cache = ValueCache() if ARGS.text_cache else None

    with ph("generate"):
        ro = generate(model, ids, mask)
    with ph("old_logprobs"), torch.no_grad():
        if ro.logits is not None:
            logits = torch.stack(ro.logits, dim=1).float()  # (B, T, V)
            logp = torch.log_softmax(logits / ARGS.temperature, dim=-1)
            logp_old = logp.gather(-1, ro.completion.unsqueeze(-1)).squeeze(-1)
            del logits, logp
            ro.logits = None
        else:
            logp_old = token_logprobs(model, ro, slice(None))
        logp_old = torch.where(ro.mask, logp_old, torch.zeros_like(logp_old))
    with ph("decode"):
        texts, offsets = decode(tok, ro)
        rewrites = [t.strip() or None for t in texts]
    ctx = [qidx[b // G] for b in range(P * G)]
    with ph("reward"):
        scored = [(rw, c) for rw, c in zip(rewrites, ctx, strict=True) if rw is not None]
        values = iter(engine.values(scored, cache).tolist())
        rewards = np.array([next(values) if rw is not None else 0.0 for rw in rewrites])
    reward_stats = dict(engine.stats)

    att_info: dict[str, Any] = {}
    atts: list[Any] = [None] * (P * G)
    if algo == "ospo":
        engine.stats.clear()
        items = [(rw, c) for rw, c in zip(rewrites, ctx, strict=True) if rw is not None]
        with ph("attribution"):
            done = attribute_batch(
                items,
                lambda pairs: engine.values(pairs, cache),
                rng=np.random.default_rng(step_seed),
                **attribution_kwargs(),
            )
        it = iter(done)
        atts = [next(it) if rw is not None else None for rw in rewrites]
        present = [a for a in atts if a is not None]
        att_info = {
            "coalitions_requested": int(sum(a.n_evaluations for a in present)),
            "pairs_valued": int(engine.stats["pairs_valued"]),
            "texts_embedded": int(engine.stats["texts_embedded"]),
            "value_calls": int(engine.stats["calls"]),
            "players_mean": r(float(np.mean([len(a.segments) for a in present])) if present else 0),
            "players_max": int(max((len(a.segments) for a in present), default=0)),
            "estimators": dict(Counter(a.estimator for a in present)),
            "embed_s": r(engine.stats["embed_s"]),
            "tokenize_s": r(engine.stats["tokenize_s"]),
            "search_s": r(engine.stats["search_s"]),
            "score_s": r(engine.stats["score_s"]),
        }

    cfg = AdvantageConfig()
    with ph("advantages"):
        lengths = ro.mask.sum(1).tolist()
        adv_rows: list[np.ndarray] = []
        for p in range(P):
            grp = slice(p * G, (p + 1) * G)
            if algo == "ospo":
                adv_rows.extend(
                    group_token_advantages(
                        rewards[grp],
                        texts[grp],
                        rewrites[grp],
                        offsets[grp],
                        [
                            None if a is None else [(s.start, s.end) for s in a.segments]
                            for a in atts[grp]
                        ],
                        [None if a is None else a.phi for a in atts[grp]],
                        cfg,
                    )
                )
            else:
                A = grpo_advantages(rewards[grp], cfg.eps)
                adv_rows.extend(np.full(n, a) for a, n in zip(A, lengths[grp], strict=True))
        adv_np, _ = pad_advantages(adv_rows, length=ro.completion.shape[1])
        adv = torch.from_numpy(adv_np).to(device)
    if algo == "ospo":  # rollouts whose advantage OSPO actually moved between tokens
        att_info["rollouts_shaped"] = sum(1 for a in adv_rows if a.size and np.ptp(a) > 1e-12)

    with ph("update"):
        model.train()
        n_active = ro.mask.sum().clamp(min=1)
        B = ro.sequences.shape[0]
        mb = ARGS.micro_batch if ARGS.micro_batch > 0 else B
        loss_total, clip_frac = 0.0, 0.0
        for a in range(0, B, mb):
            rows = slice(a, a + mb)
            logp_new = token_logprobs(model, ro, rows)
            loss, stats = clipped_surrogate_loss(
                logp_new, logp_old[rows], adv[rows], ro.mask[rows], eps_clip=ARGS.clip_eps
            )
            share = ro.mask[rows].sum() / n_active  # dapo over the whole batch
            (loss * share).backward()
            loss_total += float(loss.detach() * share)
            clip_frac += stats["clip_frac"] * float(share)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, ARGS.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    step_s = sum(ph.seconds.values())
    comp_tokens = int(ro.mask.sum())
    seq_tokens = int(ro.attention.sum())
    return {
        "phase_s": ph.seconds,
        "phase_peak_gib": ph.peak,
        "step_s": step_s,
        "completion_tokens": comp_tokens,
        "sequence_tokens": seq_tokens,
        "generated_positions": int(ro.completion.numel()),
        "prompt_tokens": ro.prompt_len,
        "generate_tokens_per_s": comp_tokens / max(ph.seconds["generate"], 1e-9),
        "update_tokens_per_s": comp_tokens / max(ph.seconds["update"], 1e-9),
        "update_seq_tokens_per_s": seq_tokens / max(ph.seconds["update"], 1e-9),
        "reward_mean": float(rewards.mean()),
        "reward_nonzero_frac": float((rewards > 0).mean()),
        "reward_value_stats": {k: r(v) for k, v in reward_stats.items()},
        "loss": loss_total,
        "clip_frac": clip_frac,
        "attribution": att_info,
    }


def summarise_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    phases = steps[0]["phase_s"].keys()
    phase_s = {k: r(float(np.mean([s["phase_s"][k] for s in steps]))) for k in phases}
    step_s = float(np.mean([s["step_s"] for s in steps]))
    peaks = {}  # GiB, max over the timed steps; None on CPU
    for k in phases:
        seen = [s["phase_peak_gib"][k] for s in steps if s["phase_peak_gib"][k] is not None]
        peaks[k] = max(seen) if seen else None
    out: dict[str, Any] = {
        "steps_timed": len(steps),
        "phase_s": phase_s,
        "step_s": r(step_s),
        "step_s_each": [r(s["step_s"]) for s in steps],
        "attribution_share": r((phase_s.get("attribution") or 0.0) / step_s) if step_s else None,
        "phase_peak_gib": peaks,
    }
    for key in (
        "generate_tokens_per_s",
        "update_tokens_per_s",
        "update_seq_tokens_per_s",
        "completion_tokens",
        "sequence_tokens",
        "reward_mean",
        "reward_nonzero_frac",
        "loss",
        "clip_frac",
    ):
        out[key] = r(float(np.mean([s[key] for s in steps])), 3)
    out["prompt_tokens"] = steps[0]["prompt_tokens"]
    out["generated_positions"] = steps[0]["generated_positions"]
    att = [s["attribution"] for s in steps if s["attribution"]]
    if att:
        numeric = [k for k, v in att[0].items() if isinstance(v, int | float)]
        out["attribution"] = {k: r(float(np.mean([a[k] for a in att])), 3) for k in numeric}
        out["attribution"]["estimators"] = dict(
            sum((Counter(a["estimators"]) for a in att), Counter())
        )
    out["reward_value_stats_last"] = steps[-1]["reward_value_stats"]
    return out


def run_model(name: str, algos: Sequence[str], engine: RetrievalEngine, state: dict) -> None:
    """Build one policy, then warm up + time each algorithm on it; results go into state."""
    device = ENGINE_DEVICE
    tok = policy_tokenizer()
    keys = [f"qwen2.5-{name}/{algo}" for algo in algos]
    if over_budget():
        for key in keys:
            state["steps"][key] = {"status": "skipped", "reason": "time budget spent"}
        return
    model = None
    try:
        free_memory(device)
        reset_peak(device)
        t0 = time.perf_counter()
        model, info = build_policy(name, ARGS.tiny, ARGS.vocab_size, device, DTYPE)
        sync(device)
        info["build_s"] = r(time.perf_counter() - t0, 2)
        if device.type == "cuda":
            info["weights_gib"] = r(torch.cuda.memory_allocated(device) / GIB, 3)
        state["models"][f"qwen2.5-{name}"] = info
    except Exception as exc:  # OOM or a version incompatibility: record and go on
        rec = error_record(exc)
        for key in keys:
            state["steps"][key] = dict(rec, phase="build")
        model = None
        free_memory(device)
        write(state)
        return
    for algo, key in zip(algos, keys, strict=True):
        if over_budget():
            state["steps"][key] = {"status": "skipped", "reason": "time budget spent"}
            continue
        optimizer = None
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=ARGS.lr, weight_decay=0.0)
            reset_peak(device)
            t0 = time.perf_counter()
            for w in range(ARGS.warmup):
                train_step(model, optimizer, tok, engine, algo, step_seed=1000 + w)
            warm_s = time.perf_counter() - t0
            steps = []
            for s in range(ARGS.steps):
                steps.append(train_step(model, optimizer, tok, engine, algo, step_seed=s))
                if over_budget():
                    break
            rec = {"status": "ok", "model": f"qwen2.5-{name}", "algo": algo}
            rec["warmup_s"] = r(warm_s, 2)
            rec.update(summarise_steps(steps))
            rec["peak_memory_gib"] = peak_gib(device)
            state["steps"][key] = rec
        except Exception as exc:
            state["steps"][key] = dict(error_record(exc), model=f"qwen2.5-{name}", algo=algo)
        finally:
            optimizer = None
            if model is not None:
                model.zero_grad(set_to_none=True)
            free_memory(device)
        write(state)
        print(f"[{elapsed():6.1f}s] {key}: {short(state['steps'][key])}", flush=True)
    del model
    free_memory(device)


def short(rec: dict[str, Any]) -> str:
    if rec.get("status") != "ok":
        return f"{rec.get('status')} {rec.get('error', rec.get('reason', ''))}"
    return (
        f"step {rec['step_s']}s phases {rec['phase_s']} peak {rec['peak_memory_gib']} GiB "
        f"attribution share {rec['attribution_share']}"
    )


# ---------------------------------------------------------------------------------------------
# Retrieval path at scale: batched vs one-by-one vs batched + text cache
# ---------------------------------------------------------------------------------------------


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
        res = attribute(text, record, rng=rng, **attribution_kwargs())
        players.append(len(res.segments))
        out.extend((t, c) for t in seen)
    return out, players


def best_of(fn: Any, repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_workload(
    engine: RetrievalEngine, prompts: int, obo_rate: float, device: torch.device
) -> dict[str, Any]:
    """Value one step's coalitions (P prompts × G realistic rewrites) three ways."""
    rng = np.random.default_rng(ARGS.seed + prompts)
    qs = [QUERIES[i % len(QUERIES)] for i in range(prompts)]
    items = [
        (synthetic_rewrite(q, rng), QUERIES.index(q)) for q in qs for _ in range(ARGS.group_size)
    ]
    req, players = requested_coalitions(items, ARGS.seed)
    out: dict[str, Any] = {
        "prompts": prompts,
        "rollouts": len(items),
        "players_mean": r(float(np.mean(players)), 2),
        "players_max": int(max(players)),
        "coalitions_requested": len(req),
        "distinct_pairs": len(set(req)),
        "distinct_texts": len({t for t, _ in req}),
    }
    engine.values(req[: ARGS.embed_batch], None)  # warm-up at full batch width
    for name, make_cache in (("batched", lambda: None), ("batched_text_cache", ValueCache)):
        engine.stats.clear()
        seconds = best_of(lambda mk=make_cache: engine.values(req, mk()), ARGS.repeats, device)
        out[name] = {
            "seconds": r(seconds),
            "texts_per_s": r(len(req) / seconds, 1),
            "speedup_vs_one_by_one": r(len(req) / seconds / obo_rate, 2),
            "per_run_mean": {k: r(v / ARGS.repeats) for k, v in engine.stats.items()},
        }

    # What the trainer runs: the estimators (CPU) around one batched, cached value call.
    def run_estimators(value_fn: Any) -> None:
        attribute_batch(items, value_fn, rng=np.random.default_rng(0), **attribution_kwargs())

    est_s = best_of(lambda: run_estimators(lambda pairs: np.zeros(len(pairs))), 1, device)
    e2e_s = best_of(
        lambda: run_estimators(lambda pairs: engine.values(pairs, ValueCache())),
        ARGS.repeats,
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
    sample = requested_coalitions(items, ARGS.seed)[0][: ARGS.one_by_one_sample]
    for pair in sample[:4]:  # warm-up
        engine.values([pair], None)

    def one_by_one() -> None:
        for pair in sample:
            engine.values([pair], None)
            sync(device)

    obo_s = best_of(one_by_one, ARGS.repeats, device)
    obo_rate = len(sample) / obo_s
    rec["one_by_one"] = {
        "texts": len(sample),
        "seconds": r(obo_s),
        "texts_per_s": r(obo_rate, 1),
        "ms_per_text": r(1000 * obo_s / len(sample), 3),
    }
    rec["workloads"] = []
    for prompts in ARGS.scale_prompts:
        if over_budget():
            rec["workloads"].append({"prompts": prompts, "status": "skipped"})
            continue
        rec["workloads"].append(measure_workload(engine, prompts, obo_rate, device))
    rec["peak_memory_gib"] = peak_gib(device)
    return rec


def retrieval_scaling(encoder: BertModel, etok: PreTrainedTokenizerFast, state: dict) -> None:
    device = ENGINE_DEVICE
    for n_products in ARGS.scale_catalog_sizes:
        key = f"catalog_{n_products}"
        if over_budget():
            state["retrieval"][key] = {"status": "skipped", "reason": "time budget spent"}
            continue
        try:
            free_memory(device)
            reset_peak(device)
            engine = RetrievalEngine(encoder, etok, n_products, device, seed=ARGS.seed + 7)
            state["retrieval"][key] = measure_catalog(engine, device)
            del engine
        except Exception as exc:
            state["retrieval"][key] = dict(error_record(exc), catalog_size=n_products)
        free_memory(device)
        write(state)
        print(
            f"[{elapsed():6.1f}s] retrieval {key}: {state['retrieval'][key]['status']}", flush=True
        )


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    strs = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny shapes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new configs")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--models", type=strs, default=["1.5b", "7b"], help=f"of {list(QWEN25)}")
    p.add_argument("--algos", type=strs, default=["grpo", "ospo"])
    p.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB)
    p.add_argument("--prompts", type=int, default=None, help="P prompts per step (default 4)")
    p.add_argument("--group-size", type=int, default=None, help="G samples per prompt (8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=None, help="timed steps per config (2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=8, help="rows per fwd/bwd; 0 = all")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa | eager | ...")
    p.add_argument("--old-logprobs", choices=("generate", "forward"), default="generate")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--clip-eps", type=float, default=0.2)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--estimator", default="auto")
    p.add_argument("--max-exact-players", type=int, default=8)
    p.add_argument("--budget", type=int, default=96, help="coalitions per rewrite (sampled)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false")
    p.add_argument("--k", type=int, default=10, help="NDCG@k")
    p.add_argument("--targets-per-query", type=int, default=20)
    p.add_argument("--catalog-size", type=int, default=None, help="for the step (100000)")
    p.add_argument("--scale-catalog-sizes", type=ints, default=None, help="100000,1000000")
    p.add_argument("--scale-prompts", type=ints, default=None, help="rollouts = P × G; 4,16")
    p.add_argument("--one-by-one-sample", type=int, default=None, help="texts timed (256)")
    p.add_argument("--repeats", type=int, default=2, help="best of N for retrieval timings")
    p.add_argument("--embed-batch", type=int, default=1024)
    p.add_argument("--embed-max-length", type=int, default=128)
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="policy weights; default bfloat16 on cuda, float32 on cpu",
    )
    p.add_argument("--encoder-dtype", choices=("bfloat16", "float16", "float32"), default=None)
    p.add_argument("--skip-steps", action="store_true", help="retrieval section only")
    p.add_argument("--skip-retrieval", action="store_true", help="training steps only")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    defaults = {  # full run, --tiny
        "prompts": (4, 2),
        "group_size": (8, 4),
        "max_new_tokens": (32, 8),
        "steps": (2, 1),
        "catalog_size": (100_000, 2_000),
        "scale_catalog_sizes": ([100_000, 1_000_000], [2_000, 5_000]),
        "scale_prompts": ([4, 16], [2]),
        "one_by_one_sample": (256, 16),
        "budget_s": (420.0, 600.0),
    }
    for k, (full, tiny) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, tiny if a.tiny else full)
    if a.out is None:
        a.out = RESULTS / ("tmp/gpu_step_tiny.json" if a.tiny else "gpu_step.json")
    unknown = [m for m in a.models if m not in QWEN25]
    if unknown or any(x not in ("grpo", "ospo") for x in a.algos):
        p.error(f"unknown model/algo in {a.models} / {a.algos}")
    if a.vocab_size < TOKENIZER_VOCAB:
        p.error(f"--vocab-size must be >= {TOKENIZER_VOCAB} (the tokenizer's)")
    return a


T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def over_budget() -> bool:
    return elapsed() > ARGS.budget_s


def write(state: dict[str, Any]) -> None:
    state["elapsed_s"] = r(elapsed(), 1)
    ARGS.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = ARGS.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(ARGS.out)


def main(argv: Sequence[str] | None = None) -> int:
    global ARGS, ENGINE_DEVICE, DTYPE, HAS_LOGITS_TO_KEEP
    ARGS = parse_args(argv)
    device = torch.device(ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ENGINE_DEVICE = device
    if ARGS.dtype:
        DTYPE = getattr(torch, ARGS.dtype)
    else:
        DTYPE = torch.bfloat16 if device.type == "cuda" else torch.float32
    enc_dtype = getattr(torch, ARGS.encoder_dtype) if ARGS.encoder_dtype else DTYPE
    import inspect

    HAS_LOGITS_TO_KEEP = "logits_to_keep" in inspect.signature(Qwen2ForCausalLM.forward).parameters
    torch.manual_seed(ARGS.seed)
    state: dict[str, Any] = {
        "benchmark": "bench/gpu_step.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device": str(device),
        "gpu_memory_gib": (
            r(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
            if device.type == "cuda"
            else None
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "numpy": np.__version__,
        },
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ARGS).items()},
            "dtype": str(DTYPE),
            "encoder_dtype": str(enc_dtype),
            "logits_to_keep": HAS_LOGITS_TO_KEEP,
            "rollouts_per_step": ARGS.prompts * ARGS.group_size,
            "lora_targets": list(LORA_TARGETS),
            "queries": list(QUERIES),
        },
        "notes": [
            "Random weights: speed and memory are real, rewards/rewrites are meaningless.",
            f"Policy vocabulary {ARGS.vocab_size} (Qwen2.5 has 151936); the carried SmolLM2 "
            "tokenizer encodes prompts and decodes samples.",
            "The whole decoded completion is the rewrite (random tokens carry no tags).",
            "Retrieval: random MiniLM-architecture encoder, exact torch.topk over random unit "
            "vectors, NDCG@k with linear gains.",
            "Times in seconds, memory in GiB (torch.cuda.max_memory_allocated).",
        ],
        "models": {},
        "steps": {},
        "retrieval": {},
    }
    print(
        f"device {state['card']} torch {torch.__version__} transformers "
        f"{transformers.__version__} peft {peft.__version__}",
        flush=True,
    )
    write(state)

    etok = encoder_tokenizer()
    encoder = build_encoder(ARGS.tiny, device, enc_dtype)
    if not ARGS.skip_steps:
        engine = RetrievalEngine(encoder, etok, ARGS.catalog_size, device, seed=ARGS.seed)
        for name in ARGS.models:
            run_model(name, ARGS.algos, engine, state)
        del engine
        free_memory(device)
    if not ARGS.skip_retrieval:
        retrieval_scaling(encoder, etok, state)
    state["finished"] = True
    write(state)
    print(json.dumps(state, indent=2, default=str))
    print(f"wrote {ARGS.out} in {elapsed():.1f}s", flush=True)
    return 0


ARGS: argparse.Namespace
ENGINE_DEVICE: torch.device
DTYPE: torch.dtype
HAS_LOGITS_TO_KEEP: bool

if __name__ == "__main__":
    sys.exit(main())
