"""OSPO against GRPO at equal rollouts → bench/results/method.json + method.png.

Two settings, each trained from the base SmolLM2-135M (no warm start) with the same seeds,
prompts per step, group size and steps for every arm, so every arm sees the same number of
rollouts:

* ``esci`` — the paper's protocol in miniature: the ESCI sample's 392 products are the whole
  index (each query's Exact products are its targets, binary gains; the other queries'
  products are its negatives, as in the paper's ~100-item pools), dense retrieval, replace mode
  (the policy's line is the query, ``rewrite-v1``).
* ``chorus`` — the product's setting: the serving index (19,798 products), hybrid retrieval,
  expansion (``--prompt-version``), human + assessed grades, the Chorus training split.

Arms: ``grpo``; ``ospo`` (ours: exact Shapley up to 8 phrases, Owen beyond, signed credit);
``ospo-paper`` (the paper's estimator: windows of width ≤ 8, ≤ 96 coalitions, proportional
shares, no gradient for zero-reward rollouts). Per run: the training reward curve (mean of the
group per step) and the greedy NDCG@10 of the final adapter on the held-out queries.
Comparisons are paired: per seed, the mean reward of the last ``--tail`` steps (OSPO − GRPO),
and per held-out query the final NDCG averaged over seeds; 95% bootstrap intervals.

    .venv/bin/python bench/method.py --setting esci --steps 100 --seeds 0,1,2
    .venv/bin/python bench/method.py --setting chorus --steps 100 --seeds 0,1,2

Results are rewritten after every run (an interrupted benchmark keeps what it finished), and a
run already in the results file is not trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from service.retrieval.metrics import bootstrap_ci  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.data import Example, load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.training.policy import load_policy  # noqa: E402
from trainer.training.resources import build_catalog_index, load_retriever, policy_model_path  # noqa: E402
from trainer.training.reward import RewardModel  # noqa: E402
from trainer.training.train import greedy_pairs, train, training_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
OUT = ROOT / "bench" / "results"
ARMS: dict[str, dict[str, Any]] = {
    "grpo": {"algo": "grpo"},
    "ospo": {"algo": "ospo"},
    "ospo-paper": {
        "algo": "ospo",
        "estimator": "window",
        "width": 8,
        "budget": 96,
        "adv_mode": "prop",
        "zero_reward": "zero",
    },  # fmt: skip
}
SETTINGS: dict[str, dict[str, Any]] = {
    "esci": {"prompt_version": "rewrite-v1", "retrieval": "dense"},
    "chorus": {"retrieval": "hybrid"},
}
# The recipe both settings share unless a flag says otherwise: small enough that 100 steps of
# one arm fit in ~10 minutes of this 2-core CPU.
DEFAULTS = {
    "rs_samples": 0, "prompts_per_step": 4, "group_size": 8, "max_new_tokens": 24,
    "lr": 1e-4, "torch_threads": 2,
}  # fmt: skip


def esci_setting(settings: Any) -> tuple[Any, list[Example], list[Example]]:
    """The ESCI sample as its own 392-product index, binary Exact targets, a 30% split."""
    retriever, _ = build_catalog_index(
        OUT / "tmp" / "method" / "esci-index",
        [(DATA / "esci" / "sample_2c_full_data.csv", "esci")],
        settings,
    )
    # Every product of the pool is graded for every query: its Exact products 1, everything
    # else 0 (the other queries' products are its negatives), so judged@10 is 1 by construction.
    negatives = dict.fromkeys(retriever.ids, 0.0)
    examples = [
        Example(ex.query, ex.key,
                negatives | {p: 1.0 if g >= 1.0 else 0.0 for p, g in ex.targets.items()})
        for ex in load_examples(str(DATA / "esci" / "sample_2c_full_data.csv"), fmt="esci")
    ]  # fmt: skip
    train_ex, val_ex = split_examples(restrict_to_index(examples, retriever.row_of), 0.3, 0)
    return retriever, train_ex, val_ex


def chorus_setting(settings: Any) -> tuple[Any, list[Example], list[Example]]:
    retriever = load_retriever(settings)
    chorus = load_examples(str(DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"))
    train_ex, val_ex = split_examples(restrict_to_index(chorus, retriever.row_of), 0.3, 0)
    return retriever, train_ex, val_ex


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(np.subtract(a, b).tolist())
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(a)}


def summarize(runs: list[dict[str, Any]], tail: int) -> dict[str, Any]:
    """Per arm: final NDCG and tail reward over seeds; OSPO arms − GRPO, paired."""
    out: dict[str, Any] = {}
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    for arm, seeds in by_arm.items():
        val = np.mean([s["val_ndcg_per_query"] for s in seeds.values()], axis=0)
        mean, lo, hi = bootstrap_ci(val.tolist())
        out[arm] = {
            "seeds": sorted(seeds),
            "val_ndcg@10": {"mean": mean, "lo": lo, "hi": hi},
            "val_judged@10": float(np.mean([s["val_judged"] for s in seeds.values()])),
            "tail_reward": float(
                np.mean([np.mean(s["reward_curve"][-tail:]) for s in seeds.values()])
            ),
            "step_s": float(np.mean([s["step_s_mean"] for s in seeds.values()])),
        }  # fmt: skip
    base = by_arm.get("grpo", {})
    for arm, seeds in by_arm.items():
        common = sorted(set(seeds) & set(base))
        if arm == "grpo" or not common:
            continue
        tail_a = [float(np.mean(seeds[s]["reward_curve"][-tail:])) for s in common]
        tail_b = [float(np.mean(base[s]["reward_curve"][-tail:])) for s in common]
        val_a = np.mean([seeds[s]["val_ndcg_per_query"] for s in common], axis=0)
        val_b = np.mean([base[s]["val_ndcg_per_query"] for s in common], axis=0)
        all_a = [float(np.mean(seeds[s]["reward_curve"])) for s in common]
        all_b = [float(np.mean(base[s]["reward_curve"])) for s in common]
        out[arm]["vs_grpo"] = {
            "tail_reward_per_seed": paired(tail_a, tail_b),
            "all_steps_reward_per_seed": seed_interval(all_a, all_b),
            "val_ndcg_per_query": paired(val_a.tolist(), val_b.tolist()),
        }
    return out


def seed_interval(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired difference over seeds with a Student-t 95% interval: the seed is the unit that is
    independent (a run's steps are not: each continues the last), and a percentile bootstrap
    over three values would only give their range."""
    diffs = np.subtract(a, b)
    out: dict[str, Any] = {"mean": float(diffs.mean()), "per_seed": diffs.tolist(), "n": len(a)}
    if len(a) >= 2:
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        out.update(lo=float(ci.low), hi=float(ci.high))
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    settings = list(report["settings"])
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(7 * len(settings), 4.5),
                             squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], settings, strict=True):
        runs = report["settings"][name]["runs"]
        for arm in ARMS:
            curves = [r["reward_curve"] for r in runs if r["arm"] == arm]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            c = np.array([x[:n] for x in curves])
            w = max(1, n // 20)  # moving average: a group's mean is noisy step to step
            kernel = np.ones(w) / w
            smooth = np.array([np.convolve(x, kernel, mode="valid") for x in c])
            x = np.arange(smooth.shape[1]) + w
            m, sd = smooth.mean(0), smooth.std(0)
            ax.plot(x, m, label=f"{arm} ({len(curves)} seeds)")
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training reward (NDCG@10, group mean, moving average)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="esci")
    ap.add_argument("--arms", default="grpo,ospo,ospo-paper")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tail", type=int, default=20, help="Last steps whose reward is compared.")
    ap.add_argument("--out", type=Path, default=OUT / "method.json")
    add_config_arguments(ap, TrainConfig, DEFAULTS, exclude=("algo", "seed"))
    args = ap.parse_args()
    base = config_from_args(TrainConfig, args, DEFAULTS)
    base = dataclasses.replace(base, **SETTINGS[args.setting])
    settings = get_settings()
    retriever, train_ex, val_ex = (
        esci_setting(settings) if args.setting == "esci" else chorus_setting(settings)
    )
    model_path = policy_model_path(settings)
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.setdefault("settings", {})
    section = report["settings"].setdefault(args.setting, {"runs": []})
    done = {(r["arm"], r["seed"], r["steps"]) for r in section["runs"]}
    val_reward = RewardModel(
        retriever, {ex.key: ex.targets for ex in val_ex}, k=10, retrieval=base.retrieval
    )
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            if (arm, seed, base.steps) in done:
                continue
            cfg = dataclasses.replace(base, seed=seed, **ARMS[arm])
            t0 = time.perf_counter()
            run_dir = OUT / "tmp" / "method" / f"{args.setting}-{arm}-s{seed}"
            result = train(cfg, retriever, train_ex, model_path, run_dir, progress=True)
            train_s = time.perf_counter() - t0
            steps = [m for m in result.metrics if "reward_mean" in m]
            tokenizer, model = load_policy(
                model_path, dataclasses.replace(cfg, warm_start=str(result.adapter_dir))
            )
            prompt = training_prompt(cfg, retriever, [ex.query for ex in val_ex])
            pairs = greedy_pairs(model, tokenizer, val_ex, cfg, prompt)
            per_query = val_reward.score(pairs)
            val = {"val_ndcg": float(per_query.mean()),
                   "val_judged": float(val_reward.judged(pairs).mean())}  # fmt: skip
            section["runs"].append({
                "arm": arm, "seed": seed, "steps": cfg.steps,
                "rollouts": len(steps) * cfg.group_size * cfg.prompts_per_step,
                "train_s": train_s,
                "step_s_mean": float(np.mean([m["step_s"] for m in steps])),
                "reward_curve": [m["reward_mean"] for m in steps],
                "val_ndcg": val["val_ndcg"], "val_judged": val["val_judged"],
                "val_ndcg_per_query": per_query.tolist(),
                "val_rewrites": [t for t, _ in pairs],
            })  # fmt: skip
            section["setup"] = {
                "train_queries": len(train_ex), "val_queries": len(val_ex),
                "products": len(retriever.ids), "config": dataclasses.asdict(base),
                "command": " ".join(sys.argv), "torch": torch.__version__,
                "load_average": os.getloadavg(), "machine": platform.platform(),
            }  # fmt: skip
            write(report, section, args)
            print(f"{args.setting} {arm} seed {seed}: {train_s:.0f} s, val {val}", flush=True)
    if section["runs"]:
        write(report, section, args)  # also re-summarises a file whose runs are all done
    print(json.dumps(section.get("summary", {}), indent=1))


def write(report: dict[str, Any], section: dict[str, Any], args: argparse.Namespace) -> None:
    section["summary"] = summarize(section["runs"], args.tail)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
