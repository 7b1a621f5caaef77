"""Training smoke runs on the real SmolLM2 policy and a tiny real index (slow: ~1 min on 1 core)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.retrieval.embedder import get_embedder
from service.retrieval.index import Retriever
from tests.conftest import write_title_index
from trainer.data import Example

MODELS = Path(__file__).resolve().parents[1] / "var" / "models"
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
    return Retriever.load_current(root, get_embedder())


@pytest.fixture(scope="module")
def runs(model_path: Path, retriever: Retriever, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from trainer.train import TrainConfig, train

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

    from trainer.train import TrainConfig, train

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
