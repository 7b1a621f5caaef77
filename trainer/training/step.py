"""One OSPO / GRPO step of the query-rewrite policy's LoRA adapter, top to bottom in one file.

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

``train`` (trainer/training/train.py) runs ``config.steps`` of these after the warm start.

Documented decisions
--------------------
* The reward is a function of (text, query key) pairs (``PairValueFn``,
  trainer/method/attribution.py), not a retriever: the step does not know what scores a text, so
  bench/gpu_step.py runs this same step with a GPU encoder and top-k. Importing this module (and
  the config and policy it takes) needs torch, transformers, peft and numpy, not faiss, bm25s,
  matplotlib or the database (the test suite checks it).
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
* Reproducibility: trainer/training/train.py says what ``seed`` fixes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.policy.prompt import DEFAULT_PROMPT, PromptConfig, RewriteMode
from trainer.method.attribution import K, PairValueFn, TextAttribution, attribute_batch
from trainer.method.ospo import (
    clipped_surrogate_loss,
    group_token_advantages,
    grpo_advantages,
    pad_advantages,
)
from trainer.training.config import TrainConfig
from trainer.training.phases import Phase, untimed
from trainer.training.rollout import (
    Rollout,
    RolloutBatch,
    RolloutSampler,
    completion_logprobs,
    sample_rollouts,
)

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


__all__ = ["StepResult", "coalition_values", "policy_update", "train_step"]
