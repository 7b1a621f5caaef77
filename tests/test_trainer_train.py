"""Training smoke runs on the real SmolLM2 policy and a tiny real index (slow: ~1 min on 1 core);
the step with any reward function; the GPU benchmark running that step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from service.retrieval.embedder import get_embedder
from service.retrieval.fusion import FusionConfig
from service.retrieval.index import Retriever
from tests.conftest import write_title_index
from tests.processes import run_script_without
from trainer.training.data import Example

if TYPE_CHECKING:
    from trainer.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "var" / "models"
TITLES = {
    "4148063": "Philips Wireless notebook mouse SPM6800/10",
    "1575802": "Philips Meeting microphone LFH9172/00",
    "1659340": "C2G 3ft Cat6 550MHz Snagless Patch Cable Orange networking cable 0.9 m",
    "713212": "Equip Cat.5e SF/UTP Patch Cable, 10m , Green",
    "254421": "HP Inkjet 250-sheet Paper Tray 250 sheets",
    "77032898": 'MSI Optix G241 60.5 cm (23.8") 1920 x 1080 pixels Full HD LED Black',
}
EXAMPLES = [
    Example("wireless mouse", "wireless mouse", {"4148063": 1.0, "1575802": 0.0}),
    Example("network cable", "network cable", {"1659340": 1.0, "713212": 1.0}),
]
STEP_KEYS = {
    "step", "reward_mean", "reward_std", "ndcg", "loss", "kl", "clip_frac", "tokens_per_s",
    "coalition_evals", "attribution_s", "step_s", "generate_s", "update_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def model_path() -> Path:
    from service.policy.models import PolicyModelError, prepare_policy_model

    try:
        return prepare_policy_model(MODELS)
    except PolicyModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    root = write_title_index(tmp_path_factory.mktemp("index"), TITLES)
    # BM25 weighted over the dense arm, so that on six titles an addition moves the ranking
    # (at the serving 3 : 1 a group's rollouts all scored alike: no signal to learn from)
    return Retriever.load_current(
        root, get_embedder(), fusion=FusionConfig(dense_weight=1.0, lexical_weight=2.0)
    )


@pytest.fixture(scope="module")
def runs(model_path: Path, retriever: Retriever, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from trainer.training.config import TrainConfig
    from trainer.training.train import train

    out = {}
    for algo in ("grpo", "ospo"):
        config = TrainConfig(
            algo=algo,  # type: ignore[arg-type]
            steps=2,
            group_size=4,
            prompts_per_step=1,
            max_new_tokens=6,
            lr=1e-3,
            lora_r=2,
            lora_alpha=4,
            lora_targets=("q_proj", "v_proj"),
            reward_k=3,
            seed=3,
            torch_threads=1,
            rs_samples=0,  # the warm start has its own test below
            rollouts="generate",  # in-process; tests/test_served_rollouts.py runs the vLLM path
        )
        run_dir = tmp_path_factory.mktemp(algo)
        out[algo] = train(config, retriever, EXAMPLES, model_path, run_dir, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ospo"])
def test_training_writes_metrics_and_changes_lora(runs, algo: str) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    result = runs[algo]
    rows = [
        json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r.keys() >= STEP_KEYS for r in rows)
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in rows)
    assert (result.out_dir / "metrics.png").stat().st_size > 0
    assert result.adapter_dir == result.out_dir / "adapter"
    info = json.loads((result.adapter_dir / "ospo-training.json").read_text())
    assert info["algo"] == algo and info["config"]["group_size"] == 4
    # peft initialises lora_B to zero: any non-zero B means the optimiser moved LoRA weights.
    assert sum(r["active_rows"] for r in rows) > 0
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b)
    assert all("lora_" in name for name in weights)  # only adapter weights are saved
    if algo == "ospo":
        assert sum(r["coalition_evals"] for r in rows) > 0
    else:
        assert all(r["coalition_evals"] == 0 for r in rows)


@pytest.mark.slow
def test_same_seed_same_first_rollouts(runs) -> None:  # type: ignore[no-untyped-def]
    # Both algorithms start from the same LoRA init and sampling seed, so step 1 samples the
    # same completions and gets the same rewards; only the update differs.
    first = {algo: runs[algo].metrics[0] for algo in runs}
    assert first["grpo"]["reward_mean"] == first["ospo"]["reward_mean"]
    assert first["grpo"]["completion_tokens_mean"] == first["ospo"]["completion_tokens_mean"]


@pytest.mark.slow
def test_warm_start_keeps_the_best_sample_and_tunes_lora(
    model_path: Path, retriever: Retriever, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from trainer.training.config import TrainConfig
    from trainer.training.train import train

    config = TrainConfig(
        steps=0,  # warm start only
        rs_samples=2,
        rs_margin=-1.0,  # keep each query's best sample whatever its lift: deterministic
        rs_epochs=1,
        max_new_tokens=6,
        lora_r=2,
        lora_alpha=4,
        lora_targets=("q_proj", "v_proj"),
        reward_k=3,
        seed=3,
        torch_threads=1,
        rollouts="generate",
    )
    result = train(config, retriever, EXAMPLES, model_path, tmp_path, progress=False)
    [row] = result.metrics
    assert row["phase"] == "warm_start" and row["rs_queries"] == 2
    # every query had a usable sample (or none: then no target, never a made-up one)
    assert row["rs_kept"] + row["rs_none"] <= 2 and row["rs_none"] == 0
    if row["rs_kept"]:
        assert row["rs_loss"] > 0
        weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
        assert any(float(w.abs().max()) > 0 for n, w in weights.items() if "lora_B" in n)


def _step_config(algo: str) -> TrainConfig:
    from trainer.training.config import TrainConfig

    return TrainConfig(
        algo=algo,  # type: ignore[arg-type]
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=8,
        lora_r=2,
        lora_alpha=4,
        lora_targets=("q_proj", "v_proj"),
        seed=3,
        rs_samples=0,
    )


@pytest.mark.slow
def test_train_step_takes_the_reward_as_a_function(model_path: Path) -> None:
    """The step scores (search text, key) pairs with whatever function it is given: one call
    for the rollouts, one for every coalition of the step (OSPO), each part inside its phase.
    (GRPO's step is the same minus attribution; the 2-step GRPO run above covers it.)"""
    algo = "ospo"
    from trainer.training.phases import PHASES, PhaseTimes
    from trainer.training.policy import load_policy, make_optimizer
    from trainer.training.step import train_step

    config = _step_config(algo)
    tokenizer, model = load_policy(model_path, config)
    calls: list[list[tuple[str, int]]] = []

    def reward(pairs: list[tuple[str, int]]) -> np.ndarray:
        calls.append(list(pairs))
        return np.array([len(text) / 100 for text, _ in pairs])  # any function of the pair

    times = PhaseTimes()
    out = train_step(
        model, tokenizer, make_optimizer(model, config), [("usb cable", 7), ("laptop bag", 9)],
        reward, config, np.random.default_rng(0), seed=1, phase=times,
    )  # fmt: skip
    assert out.keys == [7] * 4 + [9] * 4
    assert calls[0] == [
        (r.search_text, k) for r, k in zip(out.batch.rollouts, out.keys, strict=True)
    ]
    np.testing.assert_allclose(out.rewards, [len(text) / 100 for text, _ in calls[0]])
    assert out.advantages.shape == out.batch.completion_mask.shape
    assert set(times.seconds) == set(PHASES)
    attributed = [a for a in out.attributions if a is not None]
    assert len(calls) == 1 + bool(attributed)
    assert out.stats["coalition_evals"] == sum(len(c) for c in calls[1:])
    assert all(key in (7, 9) for call in calls for _, key in call)


@pytest.mark.slow
def test_equal_rewards_make_no_update(model_path: Path) -> None:
    from trainer.training.policy import load_policy, lora_parameters, make_optimizer
    from trainer.training.step import train_step

    config = _step_config("ospo")
    tokenizer, model = load_policy(model_path, config)
    before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    out = train_step(
        model, tokenizer, make_optimizer(model, config), [("usb cable", "q")],
        lambda pairs: np.full(len(pairs), 0.5), config, np.random.default_rng(0), seed=1,
    )  # fmt: skip
    assert out.stats["active_rows"] == 0 and not out.advantages.any()
    assert all(p.equal(before[n]) for n, p in lora_parameters(model).items())


@pytest.mark.slow
def test_gpu_benchmark_runs_the_project_step_without_the_serving_stack(tmp_path: Path) -> None:
    """bench/gpu_step.py runs where only torch, transformers, peft and numpy are installed: a
    tiny OSPO step goes through every phase, and nothing of the serving stack is imported."""
    from trainer.training.phases import PHASES

    out = tmp_path / "gpu_step.json"
    args = [
        "--tiny", "--models", "0.5b", "--algos", "ospo", "--skip-retrieval", "--warmup", "0",
        "--group-size", "8", "--catalog-size", "200", "--out", str(out),
    ]  # fmt: skip
    stack = (
        "faiss", "bm25s", "Stemmer", "matplotlib", "sqlalchemy", "typer", "fastapi", "celery",
        "sentence_transformers", "service.retrieval.index", "service.settings", "service.db",
    )  # fmt: skip
    done = run_script_without("bench/gpu_step.py", args, stack)
    assert done.returncode == 0, done.stderr[-3000:]
    step = json.loads(out.read_text())["steps"]["qwen2.5-0.5b/ospo"]
    assert step["status"] == "ok", step
    assert list(step["phase_s"]) == list(PHASES)  # the step's own phases, in order
    assert step["attribution"]["pairs_valued"] > 0 and step["active_rows"] > 0
