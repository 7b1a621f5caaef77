"""The policy being trained: the base causal LM with a LoRA adapter, its optimiser, and the
adapter saved for serving.

Only the LoRA weights train (``make_optimizer``); the base model stays frozen and, with the
adapter disabled, is the reference of the KL penalty (trainer/training/step.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainer.training.config import TrainConfig
from trainer.training.device import Placement

ADAPTER_DIRNAME = "adapter"
TRAINING_INFO = "ospo-training.json"


def lora_config(config: TrainConfig) -> Any:
    """peft ``LoraConfig`` of a fresh adapter: rank, alpha, dropout and target modules."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_base(model_path: Path, placement: Placement) -> tuple[Any, Any]:
    """(tokenizer, base causal LM) with weights in ``placement.dtype``, still on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return tokenizer, AutoModelForCausalLM.from_pretrained(model_path, dtype=placement.dtype)


def attach_lora(base: Any, config: TrainConfig) -> Any:
    """The trainable peft model of ``base`` (fresh LoRA weights or the warm-start adapter), on
    the config's device. The adapter is made on the CPU and then moved, so a seed gives the
    same LoRA initialisation on every device (peft keeps LoRA weights in float32 under a
    bfloat16 base); AdamW's state follows the weights onto the device at its first step."""
    from peft import PeftModel, get_peft_model

    torch.manual_seed(config.seed)  # LoRA A matrices are initialised randomly
    if config.warm_start:
        model = PeftModel.from_pretrained(base, config.warm_start, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(config))
    return model.to(config.placement().device)


def load_policy(model_path: Path, config: TrainConfig) -> tuple[Any, Any]:
    """(tokenizer, peft model) on the config's device and dtype (trainer/training/device.py),
    with fresh LoRA weights or the warm-start adapter: what training, the update, explain and
    the benchmarks load."""
    tokenizer, base = load_base(model_path, config.placement())
    return tokenizer, attach_lora(base, config)


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW on the LoRA weights only; everything else stays frozen."""
    return torch.optim.AdamW(
        list(lora_parameters(model).values()), lr=config.lr, weight_decay=config.weight_decay
    )


def save_adapter(model: Any, out_dir: Path, info: dict[str, Any]) -> Path:
    """peft ``save_pretrained`` into a temp dir, then an atomic rename to ``out_dir/adapter``."""
    final = out_dir / ADAPTER_DIRNAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{ADAPTER_DIRNAME}.", dir=out_dir))
    try:
        model.save_pretrained(tmp)
        (tmp / TRAINING_INFO).write_text(json.dumps(info, indent=2, default=str))
        tmp.chmod(0o755)
        if final.exists():
            stale = out_dir / f".{ADAPTER_DIRNAME}.stale-{time.time_ns()}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = [
    "attach_lora",
    "load_base",
    "load_policy",
    "lora_config",
    "lora_parameters",
    "make_optimizer",
    "save_adapter",
]
