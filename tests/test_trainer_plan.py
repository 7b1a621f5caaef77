"""`ospo train`'s plan: the warm start is announced with its size and how to skip it, rollouts
are counted per phase, and the ETA grows with the work and with a server still to start."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from trainer.cli.training import BAD_INPUT, register
from trainer.training.config import TrainConfig
from trainer.training.plan import describe, train_plan


def test_plan_counts_the_warm_start_and_the_steps() -> None:
    config = TrainConfig(steps=2, prompts_per_step=4, group_size=8, rs_samples=4)
    plan = train_plan(config, train_queries=27)
    assert plan.warm_start_rollouts == 27 * 4
    assert plan.rollouts_per_step == 32
    assert plan.total_rollouts == 27 * 4 + 2 * 32
    text = describe(plan, config)
    assert "warm start ON: 27 queries × 4 samples = 108 rollouts" in text
    assert "--rs-samples 0 skips it" in text
    assert "2 OSPO steps × 32 rollouts" in text and "172 rollouts in all" in text
    assert "ETA" in text


def test_no_warm_start_and_the_eta_follows_the_work() -> None:
    base = TrainConfig(steps=2, rs_samples=0)
    plan = train_plan(base, train_queries=27)
    assert plan.warm_start_rollouts == 0 and "warm start off" in describe(plan, base)
    longer = train_plan(TrainConfig(steps=20, rs_samples=0), train_queries=27)
    assert longer.eta_s > plan.eta_s
    with_warm = train_plan(TrainConfig(steps=2, rs_samples=4), train_queries=27)
    assert with_warm.eta_s > plan.eta_s
    cold = train_plan(base, train_queries=27, server_running=False)
    assert cold.server_start_s > 0 and cold.eta_s > plan.eta_s
    assert "a private one starts" in describe(cold, base)
    in_process = TrainConfig(steps=2, rs_samples=0, rollouts="generate")
    assert train_plan(in_process, 27, server_running=False).server_start_s == 0
    assert "in-process generate" in describe(train_plan(in_process, 27), in_process)


def test_unknown_sampler_exits_2() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "--rollouts", "ray"])
    assert result.exit_code == BAD_INPUT
