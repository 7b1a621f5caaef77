"""``train``: one training run of the query-rewrite policy's LoRA adapter, start to end.

``train`` loads the policy (trainer/training/policy.py), runs the warm start
(trainer/training/warmstart.py), then ``config.steps`` OSPO or GRPO steps
(trainer/training/step.py's ``train_step``) with the reward R = NDCG@k over the serving
retriever (trainer/training/reward.py's ``RewardModel``), scores greedy rewrites of held-out
queries every ``config.eval_every`` steps, and writes ``metrics.jsonl``, its plot and the
adapter. The greedy-rewrite helpers are also what the online update's gate scores.

Documented decisions
--------------------
* Reproducibility: ``seed`` fixes the LoRA initialisation, the prompt order, the sampling
  (torch's global generator is reseeded before each step's ``generate``) and the sampled
  estimators. torch CPU kernels are deterministic for a fixed thread count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from service.domain import ExpansionEntry
from service.policy.prompt import PromptConfig, RewriteMode, prompt_by_version
from trainer.method.attribution import PairValueFn
from trainer.training.config import TrainConfig
from trainer.training.data import Example
from trainer.training.phases import PHASES, PhaseTimes
from trainer.training.policy import load_policy, make_optimizer, save_adapter
from trainer.training.reward import RewardModel
from trainer.training.rollout import greedy_rollouts, sample_rollouts
from trainer.training.served_rollouts import served_sampler
from trainer.training.step import StepResult, train_step
from trainer.training.warmstart import warm_start

if TYPE_CHECKING:  # the index brings faiss; only ``train`` is given one
    from service.retrieval.index import Retriever


@dataclass
class TrainResult:
    out_dir: Path
    adapter_dir: Path
    metrics: list[dict[str, Any]]
    seconds: float
    config: TrainConfig
    reward_stats: dict[str, float] = field(default_factory=dict)


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
# The run's prompt and reward scope, greedy validation
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


__all__ = ["TrainResult", "train"]
