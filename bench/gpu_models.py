"""The stand-ins a GPU benchmark trains and rewards with (see bench/gpu_step.py's notes): the
Chorus queries and rewrite phrases, Qwen2.5 architectures (published and ``--tiny`` shapes)
with random weights and the project's LoRA, the rewrite-shaped logit bias, the MiniLM-shaped
encoder, and the tokenizers carried in ``bench/gpu_assets/``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gpu_run
import torch
from peft import get_peft_model
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from trainer.training.config import TrainConfig
from trainer.training.policy import lora_config

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "bench" / "gpu_assets"

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
    hidden, inter, layers, heads, kv, tied = (TINY if gpu_run.ARGS.tiny else QWEN25)[name]
    cfg = qwen25_config(name, tok, gpu_run.ARGS.tiny, gpu_run.ARGS.attn_implementation)
    with default_dtype(gpu_run.DTYPE), torch.device(device):
        base = Qwen2ForCausalLM(cfg)
    base.eval()
    bias = rewrite_bias(tok, gpu_run.ARGS.rewrite_bias)
    if bias is not None:
        bias = bias.to(device=device, dtype=gpu_run.DTYPE)
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
        "rewrite_bias": gpu_run.ARGS.rewrite_bias,
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
