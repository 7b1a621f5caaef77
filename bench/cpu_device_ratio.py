"""CPU speed of one training step before and after the trainer learnt devices (issue 21).

Three ways of loading the same policy, each followed by the same OSPO step (the project's
recipe, TrainConfig defaults, real SmolLM2-135M weights, a fixed reward function of the text so
no index is needed), in one run, interleaved, ``--repeats`` times each:

    before  the pre-device load: ``AutoModelForCausalLM`` in float32, seeded peft LoRA, no move
    cpu     ``load_policy`` with ``device="cpu"``
    auto    ``load_policy`` with the defaults (auto: the CPU in float32 on this machine)

It writes ``bench/results/cpu_device_ratio.json``: each way's median step seconds, the ratios to
``before`` (goal: 1 within noise), and whether the three gave the same rewards and loss (they
must: same seed, same arithmetic). Only the step is timed; loading is not.

    .venv/bin/python bench/cpu_device_ratio.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from harness.results import write_json  # noqa: E402

from service.policy.models import prepare_policy_model  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.policy import load_policy, lora_config, make_optimizer  # noqa: E402
from trainer.training.step import train_step  # noqa: E402

QUERIES = [("usb cable", "a"), ("wireless mouse", "b")]
WAYS = ("before", "cpu", "auto")


def load_before(model_path: Path, config: TrainConfig) -> tuple[Any, Any]:
    """The policy as ``load_policy`` built it before devices existed (commit 3a56c65)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    torch.manual_seed(config.seed)
    return tokenizer, get_peft_model(base, lora_config(config))


def reward(pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.array([sum(map(ord, text)) % 97 / 96 for text, _ in pairs])


def one_step(way: str, model_path: Path) -> dict[str, Any]:
    fields = {"device": "cpu"} if way == "cpu" else {}
    config = TrainConfig(rs_samples=0, **fields)
    loader = load_before if way == "before" else load_policy
    tokenizer, model = loader(model_path, config)
    optimizer = make_optimizer(model, config)
    started = time.perf_counter()
    out = train_step(
        model, tokenizer, optimizer, QUERIES, reward, config, np.random.default_rng(0), seed=1
    )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rewards": out.rewards.tolist(), "loss": out.stats["loss"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cpu_device_ratio.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_path = prepare_policy_model(ROOT / "var" / "models")
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for r in range(args.repeats):
        for way in WAYS[r % 3 :] + WAYS[: r % 3]:  # rotate the order: drift hits every way
            runs[way].append(one_step(way, model_path))
            print(f"repeat {r} {way}: {runs[way][-1]['seconds']:.2f} s", flush=True)
    median = {way: statistics.median(x["seconds"] for x in runs[way]) for way in WAYS}
    first = runs["before"][0]
    result = {
        "benchmark": "bench/cpu_device_ratio.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },  # fmt: skip
        "placement_auto": str(TrainConfig().placement()),
        "step": "OSPO, TrainConfig defaults (P=2, G=8), SmolLM2-135M, fixed text reward",
        "repeats": args.repeats,
        "step_s_median": {w: round(s, 3) for w, s in median.items()},
        "step_s_each": {w: [round(x["seconds"], 3) for x in runs[w]] for w in WAYS},
        "ratio_cpu_to_before": round(median["cpu"] / median["before"], 3),
        "ratio_auto_to_before": round(median["auto"] / median["before"], 3),
        "same_rewards_and_loss": all(
            x["rewards"] == first["rewards"] and x["loss"] == first["loss"]
            for way in WAYS
            for x in runs[way]
        ),
        "note": "The machine is shared by several sessions: the medians carry that noise; the "
        "three ways run interleaved in one process so it falls on each alike.",
    }
    write_json(args.out, result)
    shown = ("step_s_median", "ratio_cpu_to_before", "ratio_auto_to_before")
    print(json.dumps({k: result[k] for k in (*shown, "same_rewards_and_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
