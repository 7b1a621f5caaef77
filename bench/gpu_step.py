"""GPU benchmark: one OSPO / GRPO training step, and the retrieval reward path at scale.

Writes ``bench/results/gpu_step.json`` (``--tiny``: ``bench/results/tmp/gpu_step_tiny.json``)
and prints it. Made for the lent GPU machine: PyTorch, transformers and peft, but no vLLM, no
faiss, no database, no matplotlib, no model weights and no network. Besides those it imports
numpy and the project's ``trainer.train`` (its step needs nothing more: the reward is a
function it is given); tokenizers come from files carried in ``bench/gpu_assets/`` (SmolLM2-135M-
Instruct's and all-MiniLM-L6-v2's tokenizer files, both Apache-2.0).

Run on the GPU machine:   python bench/gpu_step.py
CPU smoke test (minutes): .venv/bin/python bench/gpu_step.py --tiny

What is measured, in this order (the most valuable numbers first, so a time budget that runs
out still leaves them): Qwen2.5-1.5B GRPO, 1.5B OSPO, 7B GRPO, 7B OSPO, then the retrieval path.

1. One training step: the project's own ``trainer.train.train_step``, the one ``ospo train`` and
   the online update run, with the serving prompt (``service.policy.prompt.DEFAULT_PROMPT``)
   and the project's parser, timed phase by phase through the step's ``phase`` hook
   (``torch.cuda.synchronize`` around each; trainer/phases.py): generate (``model.generate``,
   P prompts × G samples, pure sampling at temperature τ) · decode (completion text, parsed
   rewrite, per-token character offsets) · old_logprobs (log-softmax of the sampling logits
   ``generate`` returned) · reward (one call of the reward function below on every rollout's
   search text) · attribution (OSPO only: every coalition text of every rollout of the step
   valued in one call, through ``trainer.attribution.attribute_batch``) · advantages · update
   (forward, clipped surrogate loss, backward over micro-batches, grad-norm clip, AdamW step on
   the LoRA weights; rows whose advantages are all zero are skipped, as in training).
   One untimed warm-up step per (model, algorithm) precedes ``--steps`` timed ones.
2. The reward path alone with realistic rewrites (hard-coded phrase templates): coalition texts
   per second valued one by one (one embed + one search per text, as a naive per-coalition
   implementation would), batched (all coalition texts of a step, duplicates included), and
   batched with the text cache (each distinct text embedded and searched once), per catalogue
   size; plus the CPU cost of the estimators themselves.

Every TrainConfig field but ``algo`` (``--algos`` runs both) is an option with the field's help
(trainer/config_cli.py); LoRA ranks, targets, G, P, the estimators and the advantages are the
project's. This benchmark's own defaults: P=4, G=8, 2 timed steps, LoRA r=32, lr 5e-6
(``--tiny``: P=2, G=4, 8 new tokens, 1 step). The warm-start, evaluation and retriever fields
have no effect here.

What is and is not representative (numbers are about speed and memory, never quality):
* Policies are Qwen2.5 architectures (``Qwen2Config`` with the published sizes) with RANDOM
  weights in bf16. Throughput and memory do not depend on the weight values. The vocabulary is
  the carried SmolLM2 tokenizer's (49,152 tokens) instead of Qwen's 151,936, so prompts are
  encoded and samples decoded by a real tokenizer; that removes ~0.16B parameters from the
  tied 1.5B embedding and ~0.74B from the untied 7B embedding + LM head, and shrinks the logits.
* Random weights sample near-uniform token salad, which the serving parser rejects (no item
  ends before the token limit): such a step would have no rewrite to attribute and no advantage
  to update with. So the stand-in policy gets a fixed logit bias (``--rewrite-bias``, added to
  the LM head's output, in sampling and training alike) towards the tokens of the words below,
  commas and the end token: completions become comma-separated word soup of a trained policy's
  length and shape, which the parser keeps as additions; the ones it cannot use score the raw
  query and have no players (``parse_rate`` in the results). The bias costs one addition on
  the logits.
* Reward: an all-MiniLM-L6-v2-architecture encoder (BertModel from the carried config.json,
  random weights, mean pooling, L2 norm) and a synthetic catalogue of random unit vectors on
  the GPU; retrieval is ``torch.topk`` of ``q @ P.T`` (exact search, what faiss-gpu flat does);
  NDCG@k with linear gains against per-query graded targets (half drawn near the query's own
  embedding so some rewards are non-zero, half random). Reward values are meaningless; their
  cost is real.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from peft import get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from trainer.method.attribution import attribute, attribute_batch  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.phases import PhaseTimes  # noqa: E402
from trainer.training.train import TrainConfig, lora_config, make_optimizer, train_step  # noqa: E402

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
# TrainConfig fields where this benchmark's defaults differ from the project's (a full run),
# and where --tiny's differ from those.
CONFIG_DEFAULTS = {"prompts_per_step": 4, "steps": 2, "lora_r": 32, "lr": 5e-6}
TINY_CONFIG = {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "steps": 1}


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


class Phases(PhaseTimes):
    """The step's ``phase`` hook: seconds synchronised with the GPU, each phase's peak GPU memory
    and what the retrieval engine counted while it ran (``RetrievalEngine.stats``)."""

    def __init__(self, device: torch.device, engine: RetrievalEngine) -> None:
        super().__init__()
        self.device, self.engine = device, engine
        self.peak: dict[str, float | None] = {}
        self.engine_stats: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync(self.device)
        reset_peak(self.device)
        self.engine.stats.clear()
        with super().__call__(name):
            yield
            sync(self.device)
        self.peak[name] = peak_gib(self.device)
        self.engine_stats[name] = dict(self.engine.stats)


def versions() -> dict[str, str | None]:
    """What a GPU result depends on besides the card."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
    }


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


def rewrite_bias(tok: PreTrainedTokenizerFast, strength: float) -> torch.Tensor | None:
    """(V,) logit bias under which a random policy writes rewrite-shaped completions.

    A random model's logits hardly vary, so with ``strength`` well above their spread token t
    is sampled with probability ∝ exp(bias_t): one of the words of QUERIES, ADJECTIVES and
    PHRASES (their space-prefixed tokens) 76% of the time, a comma 20% (items of ~4 tokens),
    the end token 4%. None (no bias) when ``strength`` is 0.
    """
    if strength <= 0:
        return None
    words = {w for text in (*QUERIES, *ADJECTIVES, *PHRASES) for w in text.split()}
    ids = sorted({i for w in words for i in tok(" " + w, add_special_tokens=False)["input_ids"]})
    (comma,) = tok(",", add_special_tokens=False)["input_ids"]
    bias = torch.zeros(len(tok))
    bias[ids] = strength
    bias[comma] = strength + math.log(0.20 / 0.76 * len(ids))
    bias[tok.eos_token_id] = strength + math.log(0.04 / 0.76 * len(ids))
    return bias


def qwen25_config(
    name: str, tok: PreTrainedTokenizerFast, tiny: bool, attn_implementation: str = "sdpa"
) -> Qwen2Config:
    """The Qwen2.5-``name`` architecture (``TINY``'s shapes with ``tiny``), ``tok``'s vocabulary."""
    hidden, inter, layers, heads, kv, tied = (TINY if tiny else QWEN25)[name]
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
        attn_implementation=attn_implementation,
    )


def build_policy(
    name: str, config: TrainConfig, tok: PreTrainedTokenizerFast, device: torch.device
) -> tuple[Any, dict[str, Any]]:
    """Qwen2.5-``name`` architecture with random weights and the project's LoRA (``config``),
    writing rewrite-shaped word soup (``rewrite_bias``)."""
    hidden, inter, layers, heads, kv, tied = (TINY if ARGS.tiny else QWEN25)[name]
    cfg = qwen25_config(name, tok, ARGS.tiny, ARGS.attn_implementation)
    with default_dtype(DTYPE), torch.device(device):
        base = Qwen2ForCausalLM(cfg)
    base.eval()
    bias = rewrite_bias(tok, ARGS.rewrite_bias)
    if bias is not None:
        bias = bias.to(device=device, dtype=DTYPE)
        base.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + bias)
    model = get_peft_model(base, lora_config(config))
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
        "vocab_size": len(tok),
        "params_total": n_total,
        "params_trainable": n_train,
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "rewrite_bias": ARGS.rewrite_bias,
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
        self.k = ARGS.config.reward_k
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
# One training step: the project's own, timed phase by phase
# ---------------------------------------------------------------------------------------------


def timed_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    tok: PreTrainedTokenizerFast,
    engine: RetrievalEngine,
    config: TrainConfig,
    step_seed: int,
) -> dict[str, Any]:
    """``trainer.train.train_step`` on P of the QUERIES, rewarded by ``engine``; its record."""
    P = config.prompts_per_step
    queries = [QUERIES[(step_seed * P + i) % len(QUERIES)] for i in range(P)]
    cache = ValueCache() if ARGS.text_cache else None
    ph = Phases(ENGINE_DEVICE, engine)
    out = train_step(
        model,
        tok,
        optimizer,
        [(q, QUERIES.index(q)) for q in queries],  # the key is the query's row in the targets
        lambda pairs: engine.values(pairs, cache),
        config,
        np.random.default_rng(step_seed),
        seed=step_seed,
        phase=ph,
    )
    batch, rewards = out.batch, out.rewards
    step_s = sum(ph.seconds.values())
    comp_tokens = batch.n_tokens
    seq_tokens = int(batch.attention_mask.sum())
    rec: dict[str, Any] = {
        "phase_s": ph.seconds,
        "phase_peak_gib": ph.peak,
        "step_s": step_s,
        "completion_tokens": comp_tokens,
        "sequence_tokens": seq_tokens,
        "generated_positions": int(batch.completion_mask.numel()),
        "prompt_tokens": batch.prompt_length,
        "generate_tokens_per_s": comp_tokens / max(ph.seconds["generate"], 1e-9),
        "update_tokens_per_s": comp_tokens / max(ph.seconds["update"], 1e-9),
        "update_seq_tokens_per_s": seq_tokens / max(ph.seconds["update"], 1e-9),
        "reward_mean": float(rewards.mean()),
        "reward_nonzero_frac": float((rewards > 0).mean()),
        "parse_rate": float(np.mean([ro.rewrite is not None for ro in batch.rollouts])),
        "active_rows": out.stats["active_rows"],
        "reward_value_stats": {k: r(v) for k, v in ph.engine_stats["reward"].items()},
        "loss": out.stats["loss"],
        "clip_frac": out.stats["clip_frac"],
        "attribution": {},
    }
    if config.algo == "ospo":
        present = [a for a in out.attributions if a is not None]
        counted = Counter(ph.engine_stats["attribution"])
        adv = out.advantages.float().cpu().numpy()
        lengths = batch.completion_mask.sum(1).tolist()
        rec["attribution"] = {
            "coalitions_requested": int(sum(a.n_evaluations for a in present)),
            "pairs_valued": int(counted["pairs_valued"]),
            "texts_embedded": int(counted["texts_embedded"]),
            "value_calls": int(counted["calls"]),
            "players_mean": r(out.stats["players_mean"]),
            "players_max": int(max((len(a.segments) for a in present), default=0)),
            "estimators": dict(Counter(a.estimator for a in present)),
            "embed_s": r(counted["embed_s"]),
            "tokenize_s": r(counted["tokenize_s"]),
            "search_s": r(counted["search_s"]),
            "score_s": r(counted["score_s"]),
            # rollouts whose advantage OSPO actually moved between tokens
            "rollouts_shaped": sum(
                1 for b, n in enumerate(lengths) if n and np.ptp(adv[b, :n]) > 1e-12
            ),
        }
    return rec


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
        "parse_rate",
        "active_rows",
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
        model, info = build_policy(name, ARGS.config, tok, device)
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
            config = dataclasses.replace(ARGS.config, algo=algo)
            optimizer = make_optimizer(model, config)
            reset_peak(device)
            t0 = time.perf_counter()
            for w in range(ARGS.warmup):
                timed_step(model, optimizer, tok, engine, config, step_seed=1000 + w)
            warm_s = time.perf_counter() - t0
            steps = []
            for s in range(config.steps):
                steps.append(timed_step(model, optimizer, tok, engine, config, step_seed=s))
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
        res = attribute(text, record, rng=rng, **ARGS.config.attribution_kwargs())
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
    config = ARGS.config
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
        attribute_batch(
            items, value_fn, rng=np.random.default_rng(0), **config.attribution_kwargs()
        )

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
    sample = requested_coalitions(items, ARGS.config.seed)[0][: ARGS.one_by_one_sample]
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
            engine = RetrievalEngine(encoder, etok, n_products, device, seed=ARGS.config.seed + 7)
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
    p.add_argument("--models", type=strs, default=["1.5b", "7b"], help=f"of {list(QWEN25)}")
    p.add_argument("--algos", type=strs, default=["grpo", "ospo"])
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before --steps timed")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa | eager | ...")
    p.add_argument(
        "--rewrite-bias", type=float, default=10.0,
        help="logit bias of rewrite words, commas and the end token (0: uniform token salad)",
    )  # fmt: skip
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false")
    p.add_argument("--targets-per-query", type=int, default=20)
    p.add_argument("--catalog-size", type=int, default=None, help="for the step (100000)")
    p.add_argument("--scale-catalog-sizes", type=ints, default=None, help="100000,1000000")
    p.add_argument("--scale-prompts", type=ints, default=None, help="rollouts = P × G; 4,16")
    p.add_argument("--one-by-one-sample", type=int, default=None, help="texts timed (256)")
    p.add_argument("--repeats", type=int, default=2, help="best of N for retrieval timings")
    p.add_argument("--embed-batch", type=int, default=1024)
    p.add_argument("--embed-max-length", type=int, default=128)
    p.add_argument("--encoder-dtype", choices=("bfloat16", "float16", "float32"), default=None)
    p.add_argument("--skip-steps", action="store_true", help="retrieval section only")
    p.add_argument("--skip-retrieval", action="store_true", help="training steps only")
    add_config_arguments(p, TrainConfig, CONFIG_DEFAULTS, exclude=("algo",))
    a = p.parse_args(argv)
    try:
        a.config = config_from_args(
            TrainConfig, a, {**CONFIG_DEFAULTS, **(TINY_CONFIG if a.tiny else {})}
        )
    except (ValueError, TypeError) as e:
        p.error(str(e))
    defaults = {  # full run, --tiny
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
    if a.config.steps < 1:
        p.error("--steps: at least one timed step")
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
    global ARGS, ENGINE_DEVICE, DTYPE
    ARGS = parse_args(argv)
    config: TrainConfig = ARGS.config
    placement = config.placement()  # --device/--dtype: TrainConfig's, resolved as training does
    device = ENGINE_DEVICE = placement.device
    DTYPE = placement.dtype
    enc_dtype = getattr(torch, ARGS.encoder_dtype) if ARGS.encoder_dtype else DTYPE
    torch.manual_seed(config.seed)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
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
        "versions": versions(),
        "config": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(ARGS).items()
                if k != "config" and k not in train_fields
            },
            "train_config": dataclasses.asdict(config),
            "dtype": str(DTYPE),
            "encoder_dtype": str(enc_dtype),
            "rollouts_per_step": config.prompts_per_step * config.group_size,
            "lora_targets": list(config.lora_targets),
            "queries": list(QUERIES),
        },
        "notes": [
            "Random weights: speed and memory are real, rewards/rewrites are meaningless.",
            "The step is trainer.train.train_step with the serving prompt and parser.",
            "Policy vocabulary: the carried SmolLM2 tokenizer's (Qwen2.5 has 151936).",
            "The random policy's logits are biased towards rewrite words, commas and the end "
            "token (rewrite_bias), so completions parse as word-soup additions (parse_rate); "
            "unusable ones score the raw query and have no players.",
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
        engine = RetrievalEngine(encoder, etok, ARGS.catalog_size, device, seed=config.seed)
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

if __name__ == "__main__":
    sys.exit(main())
