"""The training device (trainer/training/device.py): one resolver, and a CPU path that did not
change.

``BEFORE`` holds what one GRPO and one OSPO step of the real SmolLM2 policy gave at commit
3a56c65, before the trainer knew devices: the same seed on this CPU machine, torch on 1 thread,
a fixed reward function of the text. Run with ``device`` left at auto and with ``cpu`` named, the
step must still give those numbers: the sampled completions (their rewards), the loss, the
gradient norm and the LoRA weights after the update. To regenerate (only when a change is
*meant* to move them): ``python tests/test_device.py`` from a checkout of the old commit.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

# 3a56c65, this machine, torch 2.13.0+cpu, 1 thread (see module docstring)
_REWARDS = [0.92708333, 0.29166667, 0.125, 0.75, 0.1875, 0.875, 0.03125, 0.27083333]
BEFORE: dict[str, dict[str, Any]] = {
    "grpo": {
        "rewards": _REWARDS,
        "completion_tokens": 64,
        "loss": 1.648440957069397e-07,
        "grad_norm": 0.2841593027114868,
        "lora_abs_sum": 1485.366270400405,
    },
    "ospo": {
        "rewards": _REWARDS,  # the same seed samples the same completions
        "completion_tokens": 64,
        "loss": 1.6763806343078613e-07,
        "grad_norm": 0.3329125642776489,
        "lora_abs_sum": 1485.3737572395635,
    },
}


def step_metrics(model_path: Path, algo: str, **fields: Any) -> dict[str, Any]:
    """One step of the project's own ``train_step`` on two queries; what it sampled and did."""
    import numpy as np
    import torch

    from tests.test_trainer_train import _step_config  # the train_step tests' small config
    from trainer.training.policy import load_policy, lora_parameters, make_optimizer
    from trainer.training.step import train_step

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels are deterministic for a fixed thread count
    try:
        config = dataclasses.replace(_step_config(algo), lr=1e-3, **fields)
        tokenizer, model = load_policy(model_path, config)

        def reward(pairs: list[tuple[str, str]]) -> np.ndarray:  # any fixed function of the text
            return np.array([sum(map(ord, text)) % 97 / 96 for text, _ in pairs])

        out = train_step(
            model, tokenizer, make_optimizer(model, config),
            [("usb cable", "a"), ("wireless mouse", "b")], reward, config,
            np.random.default_rng(0), seed=1,
        )  # fmt: skip
        lora = lora_parameters(model)
        return {
            "rewards": [round(float(x), 8) for x in out.rewards],
            "completion_tokens": out.batch.n_tokens,
            "loss": float(out.stats["loss"]),
            "grad_norm": float(out.stats["grad_norm"]),
            "lora_abs_sum": float(sum(p.detach().abs().double().sum() for p in lora.values())),
            "weights": {str(p.dtype) for p in model.parameters()} == {"torch.float32"},
            "device": str(next(model.parameters()).device),
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_path() -> Path:
    from service.policy.models import PolicyModelError, prepare_policy_model

    try:
        return prepare_policy_model(ROOT / "var" / "models")
    except PolicyModelError as e:
        pytest.skip(str(e))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algo", "device"), [("grpo", None), ("ospo", "cpu")]  # auto and cpu named
)  # fmt: skip
def test_cpu_step_gives_what_it_gave_before_devices(
    model_path: Path, algo: str, device: str | None
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto resolves to the GPU here; this pins the CPU path")
    fields = {} if device is None else {"device": device, "dtype": "float32"}
    got = step_metrics(model_path, algo, **fields)
    want = BEFORE[algo]
    assert got["device"] == "cpu" and got["weights"]  # float32 on the CPU, as before
    assert got["rewards"] == want["rewards"]  # the same completions were sampled
    assert got["completion_tokens"] == want["completion_tokens"]
    # The update to float32 rounding: a batched or row-by-row forward, or old log-probs from
    # ``generate``'s logits or a forward pass, move these in their 7th digit; a dtype or device
    # change moves them in the 3rd. The loss of one update per batch is ~0 (ratio 1, advantages
    # centred), so it is held to an absolute bound: a sum of ~1-sized terms that cancel, whose
    # 7th-digit moves add up to ~1e-6 (the shared-prefix forward gave −9.3e-7 against 1.7e-7).
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    assert got["lora_abs_sum"] == pytest.approx(want["lora_abs_sum"], rel=1e-6)
    assert got["loss"] == pytest.approx(want["loss"], abs=3e-6)


def test_auto_is_cpu_float32_without_a_gpu_and_cuda_is_refused() -> None:
    import torch

    from trainer.training.config import TrainConfig
    from trainer.training.device import resolve_placement

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    placement = TrainConfig().placement()
    assert (placement.device.type, placement.dtype) == ("cpu", torch.float32)
    assert resolve_placement("cpu", "bfloat16").dtype == torch.bfloat16  # named: as asked
    with pytest.raises(ValueError, match="no GPU"):
        resolve_placement("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="tpu")  # type: ignore[arg-type]


def test_device_and_dtype_are_options_of_every_front_end() -> None:
    from trainer.training.config import TrainConfig
    from trainer.training.config_options import config_options

    options = {o.name: o for o in config_options(TrainConfig)}
    assert "[auto|cpu|cuda]" in options["device"].help
    assert "[auto|float32|bfloat16|float16]" in options["dtype"].help
    assert options["device"].default == options["dtype"].default == "auto"


if __name__ == "__main__":
    from service.policy.models import prepare_policy_model

    path = prepare_policy_model(ROOT / "var" / "models")
    print(json.dumps({algo: step_metrics(path, algo) for algo in ("grpo", "ospo")}, indent=1))
