"""Warm start by rejection sampling: teach the policy the additions that already help.

A 135M model rarely samples a helpful addition, so policy-gradient steps from the base model
mostly see groups of equally useless rollouts. Rejection sampling (as in RAFT / ReST / expert
iteration) first finds what works and fine-tunes on it:

    1. sample     N completions per training query at temperature τ (one ``generate`` call
                  per chunk of queries, the serving prompt)
    2. score      R = NDCG@k of each completion's search text and R(q) of the raw query, with
                  the training reward (hybrid retrieval by default), all in one batch
    3. keep       per query, the best completion if R − R(q) ≥ ``rs_margin``; with ``rs_none``,
                  queries where no completion clears the margin get the answer "NONE"
                  (search with the raw query) as their target
    4. fine-tune  ``rs_epochs`` passes of token cross-entropy on the kept completions (the
                  prompt is context, only completion tokens are predicted), LoRA weights only

Documented decisions
--------------------
* Only the best completion per query is kept: several near-duplicates of one query would
  weigh it more than the others.
* The kept tokens are the sampled ids themselves (through the token that ended them), so the
  fine-tuning target is exactly a sequence the policy can produce, stop token included.
* "NONE" targets are off by default: where no sample helped, the query is left out rather than
  taught to add nothing (on a small query set NONE targets risk teaching "never add"; not
  measured against the alternative yet: `--rs-none` is there to do it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from service.policy.prompt import PromptConfig
from trainer.training.data import Example
from trainer.training.reward import RewardModel
from trainer.training.rollout import (
    RolloutSampler,
    completion_logprobs,
    left_pad,
    prompt_token_ids,
    sample_rollouts,
)

if TYPE_CHECKING:
    from trainer.training.config import TrainConfig

NONE_ANSWER = "NONE"


@dataclass
class Target:
    """One fine-tuning example: prompt ids and the completion ids to predict."""

    key: str
    prompt_ids: list[int]
    completion_ids: list[int]
    gain: float  # R − R(q) of the kept completion (0 for a NONE target)


def collect_targets(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    reward: RewardModel,
    config: TrainConfig,
    prompt: PromptConfig,
    chunk: int = 8,
    progress: bool = True,
    sampler: RolloutSampler = sample_rollouts,
) -> tuple[list[Target], dict[str, float]]:
    """Steps 1–3: the kept completions, and how many queries had one."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    prompts = prompt_token_ids(tokenizer, [ex.query for ex in examples], prompt)
    none_ids = tokenizer(NONE_ANSWER, add_special_tokens=False)["input_ids"]
    none_ids = [*none_ids, tokenizer.eos_token_id]
    targets: list[Target] = []
    gains: list[float] = []
    bar = tqdm(total=len(examples), desc="warm start", unit="query", disable=not progress)
    for start in range(0, len(examples), chunk):
        part = list(examples[start : start + chunk])
        batch = sampler(
            model,
            tokenizer,
            [ex.query for ex in part],
            group_size=config.rs_samples,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            prompt=prompt,
            seed=config.seed * 7_919 + start,
        )
        keys = [part[r.prompt_index].key for r in batch.rollouts]
        scores = reward.score(
            [(r.search_text, k) for r, k in zip(batch.rollouts, keys, strict=True)]
            + [(ex.query, ex.key) for ex in part]
        )
        raw = scores[len(batch.rollouts) :]
        for i, ex in enumerate(part):
            rows = [b for b, r in enumerate(batch.rollouts) if r.prompt_index == i and r.rewrite]
            lift = {b: scores[b] - raw[i] for b in rows}
            best = max(rows, key=lambda b: (lift[b], -b), default=None)
            if best is not None and lift[best] >= config.rs_margin:
                targets.append(
                    Target(ex.key, prompts[start + i], batch.rollouts[best].token_ids, lift[best])
                )
                gains.append(float(lift[best]))
            elif config.rs_none:
                targets.append(Target(ex.key, prompts[start + i], none_ids, 0.0))
        bar.update(len(part))
    bar.close()
    stats = {
        "rs_queries": float(len(examples)),
        "rs_kept": float(len(gains)),
        "rs_none": float(len(targets) - len(gains)),
        "rs_mean_lift": float(np.mean(gains)) if gains else 0.0,
        "rs_sample_s": time.perf_counter() - started,
    }
    return targets, stats


def fine_tune(
    model: Any, tokenizer: Any, targets: Sequence[Target], config: TrainConfig
) -> dict[str, float]:
    """Step 4: cross-entropy on completion tokens, ``rs_epochs`` passes, AdamW on LoRA."""
    started = time.perf_counter()
    if not targets or config.rs_epochs == 0:
        return {"rs_loss": 0.0, "rs_tune_s": 0.0}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.rs_lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses: list[float] = []
    for _ in range(config.rs_epochs):
        order = rng.permutation(len(targets))
        for start in range(0, len(order), config.micro_batch_size):
            rows = [targets[i] for i in order[start : start + config.micro_batch_size]]
            ids, mask = left_pad([t.prompt_ids for t in rows], pad)  # (b, P)
            T = max(len(t.completion_ids) for t in rows)
            completion = torch.full((len(rows), T), pad, dtype=torch.long)
            completion_mask = torch.zeros((len(rows), T), dtype=torch.long)
            for b, t in enumerate(rows):
                completion[b, : len(t.completion_ids)] = torch.tensor(t.completion_ids)
                completion_mask[b, : len(t.completion_ids)] = 1
            # built on the CPU, trained on the policy's device
            sequences = torch.cat([ids, completion], dim=1).to(model.device)
            attention = torch.cat([mask, completion_mask], dim=1).to(model.device)
            completion_mask = completion_mask.to(model.device)
            nll = -completion_logprobs(model, sequences, attention, ids.shape[1])  # (b, T)
            loss = (nll * completion_mask).sum() / completion_mask.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return {"rs_loss": float(np.mean(losses)), "rs_tune_s": time.perf_counter() - started}


def warm_start(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    reward: RewardModel,
    config: TrainConfig,
    prompt: PromptConfig,
    progress: bool = True,
    sampler: RolloutSampler = sample_rollouts,
) -> dict[str, float]:
    """Rejection sampling then fine-tuning (module docstring); returns its statistics."""
    targets, stats = collect_targets(
        model, tokenizer, examples, reward, config, prompt, progress=progress, sampler=sampler
    )
    return {**stats, **fine_tune(model, tokenizer, targets, config)}
