"""Training cost benchmark → bench/results/training_cost.json.

Measures, on this machine and the real SmolLM2-135M policy with Chorus queries over the Icecat
catalogue:
1. seconds per training step, GRPO vs OSPO, same seed and settings (G=8 by default), with the
   split into generation / reward / attribution / update, and the share of OSPO's step spent
   in attribution (all coalition retrievals included);
2. the coalition value function v(S) of one step's worth of rollouts (P prompts × G samples
   from the base policy): every coalition text of the whole step valued in ONE embedder call
   and ONE FAISS search with the per-step text cache (what the trainer does), against valuing
   each coalition one by one (one embed + one search per coalition, no cache, as a naive
   per-rollout implementation would). One-by-one is timed on a sample of coalitions and
   extrapolated to all of them (``--one-by-one-sample``).

Run: `.venv/bin/python bench/training_cost.py` (small budget: `--steps 2 --prompts-per-step 1`).
Every TrainConfig field but ``algo`` (both are run) is a flag with the field's help
(trainer/training/config_options.py); here ``--steps`` defaults to 3 and ``--prompts-per-step``
to 1.
The first run embeds the Icecat catalogue into bench/results/tmp/icecat-index (reused later).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from harness.results import write_json  # noqa: E402

from service.settings import get_settings  # noqa: E402
from trainer.method.attribution import attribute_batch  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.data import load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.training.policy import load_policy  # noqa: E402
from trainer.training.resources import build_catalog_index, load_retriever, policy_model_path  # noqa: E402
from trainer.training.reward import RewardModel  # noqa: E402
from trainer.training.rollout import sample_rollouts  # noqa: E402
from trainer.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "chorus_icecat"
OUT = ROOT / "bench" / "results"
CONFIG_DEFAULTS = {"steps": 3, "prompts_per_step": 1}  # per algorithm: a few minutes of CPU


def bench_retriever(index_dir: Path | None):  # type: ignore[no-untyped-def]
    settings = get_settings()
    if index_dir is not None:
        return load_retriever(settings, index_dir)
    root = OUT / "tmp" / "icecat-index"
    retriever, _ = build_catalog_index(root, [(DATA / "icecat_products", "icecat")], settings)
    return retriever


def step_costs(rows: list[dict]) -> dict[str, float]:
    keys = ("step_s", "generate_s", "reward_s", "attribution_s", "update_s", "coalition_evals")
    out = {f"{k}_mean": float(np.mean([r[k] for r in rows])) for k in keys}
    out["tokens_per_s_mean"] = float(np.mean([r["tokens_per_s"] for r in rows]))
    out["completion_tokens_mean"] = float(np.mean([r["completion_tokens_mean"] for r in rows]))
    out["attribution_share"] = out["attribution_s_mean"] / out["step_s_mean"]
    out["steps"] = len(rows)
    return out


def coalition_speedup(
    model_path: Path, retriever, examples, config: TrainConfig, one_by_one_sample: int
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Batched + cached v(S) for one step's rollouts vs one embed + search per coalition."""
    tokenizer, model = load_policy(model_path, config)
    chosen = examples[: config.prompts_per_step]
    batch = sample_rollouts(
        model, tokenizer, [e.query for e in chosen], group_size=config.group_size,
        max_new_tokens=config.max_new_tokens, seed=config.seed,
    )  # fmt: skip
    items = [
        (r.rewrite, chosen[r.prompt_index].key) for r in batch.rollouts if r.rewrite is not None
    ]
    targets = {e.key: e.targets for e in chosen}

    # What each rollout's estimator asks for (distinct texts per rollout, as attribute() dedupes).
    per_rollout: list[tuple[str, str]] = []

    def record(pairs: list[tuple[str, str]]) -> np.ndarray:
        per_rollout.extend(pairs)
        return np.zeros(len(pairs))

    kwargs = config.attribution_kwargs()
    seeds = list(range(len(items)))  # the same sampled-estimator draws in both measurements
    for item, seed in zip(items, seeds, strict=True):  # what a per-rollout loop would value
        attribute_batch([item], record, seeds=[seed], **kwargs)
    reward = RewardModel(retriever, targets, k=config.reward_k)
    t = time.perf_counter()
    attribute_batch(items, reward.score, seeds=seeds, **kwargs)
    batched_s = time.perf_counter() - t
    distinct = reward.stats.texts_embedded

    rng = np.random.default_rng(1)
    sample_idx = rng.permutation(len(per_rollout))[:one_by_one_sample]
    t = time.perf_counter()
    for i in sample_idx:
        text, key = per_rollout[i]
        fresh = RewardModel(retriever, {key: targets[key]}, k=config.reward_k)  # no cache
        fresh.score([(text, key)])
    sample_s = time.perf_counter() - t
    one_by_one_s = sample_s / max(len(sample_idx), 1) * len(per_rollout)
    return {
        "rollouts": len(batch.rollouts),
        "rollouts_with_rewrite": len(items),
        "coalition_requests": len(per_rollout),
        "distinct_texts_embedded": distinct,  # after the step-wide dedupe / cache
        "embed_calls_batched": reward.stats.embed_calls,
        "batched_cached_s": batched_s,
        "one_by_one_sampled": len(sample_idx),
        "one_by_one_sample_s": sample_s,
        "one_by_one_s_extrapolated": one_by_one_s,
        "speedup": one_by_one_s / max(batched_s, 1e-9),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one-by-one-sample", type=int, default=300)
    ap.add_argument("--index-dir", type=Path, default=None, help="default: private Icecat index")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT / "training_cost.json")
    add_config_arguments(ap, TrainConfig, CONFIG_DEFAULTS, exclude=("algo",))
    args = ap.parse_args()
    base_config = config_from_args(TrainConfig, args, CONFIG_DEFAULTS)
    if base_config.torch_threads:
        torch.set_num_threads(base_config.torch_threads)

    started = time.perf_counter()
    retriever = bench_retriever(args.index_dir)
    model_path = policy_model_path(get_settings(), args.model)
    examples = restrict_to_index(
        load_examples(str(DATA / "Broad_Query_Set_rated.csv")), retriever.row_of
    )
    train_ex, _ = split_examples(examples, 0.3, 0)

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=OUT / "tmp") as tmp:
        for algo in ("grpo", "ospo"):
            config = dataclasses.replace(base_config, algo=algo)
            result = train(config, retriever, train_ex, model_path, Path(tmp) / algo)
            results[algo] = step_costs([m for m in result.metrics if "step_s" in m])
    grpo, ospo = results["grpo"], results["ospo"]
    results["ospo_over_grpo_step_time"] = ospo["step_s_mean"] / grpo["step_s_mean"]  # type: ignore[index]
    results["coalitions"] = coalition_speedup(
        model_path, retriever, train_ex, base_config, args.one_by_one_sample
    )
    results["setup"] = {
        "model": str(model_path),
        "index_version": retriever.version,
        "products": len(retriever.ids),
        "group_size": base_config.group_size,
        "prompts_per_step": base_config.prompts_per_step,
        "max_new_tokens": base_config.max_new_tokens,
        "estimator": base_config.estimator,
        "steps_per_algo": base_config.steps,
        "train_config": dataclasses.asdict(base_config),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "device": "cpu",
        "note": "shared 2-core machine; other processes compete for the cores",
        "total_s": time.perf_counter() - started,
    }
    write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
