"""Quality benchmark → bench/results/quality.json + quality.png.

A fixed query split of the Chorus judgments (held-out share ``--val-fraction``, split seed
``--split-seed``) over an index of the whole Icecat catalogue. On the held-out queries it
compares, with greedy rewrites:
    raw   — the shopper's query, no rewrite;
    base  — SmolLM2-135M-Instruct without an adapter;
    grpo  — base + LoRA trained with GRPO for ``--steps`` steps;
    ospo  — base + LoRA trained with OSPO for the same steps, same settings and seeds;
for each of ``--seeds``. Metrics (NDCG@10, recall@10/50, MRR) are scored with the dense
retriever used in training (full index and pooled) and with BM25, which training never saw.
Per method: the per-query values are averaged over seeds, then a percentile bootstrap over
queries gives the 95% CI; paired per-query differences (OSPO − GRPO, each − raw) get their own
CIs; per-seed means are listed too.

The full default budget (3 seeds × 2 algorithms × ``--steps``) takes hours on a 2-core CPU;
every budget knob is a flag. Results are rewritten after every trained adapter, so an
interrupted run still leaves what it finished. Run:
    .venv/bin/python bench/quality.py --steps 20 --seeds 0,1,2
Adapters and training curves are kept under bench/results/tmp/quality/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from service.retrieval.metrics import bootstrap_ci  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.data import load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.evaluate import METRICS, bm25_for, evaluate_policies  # noqa: E402
from trainer.resources import (  # noqa: E402
    build_catalog_index,
    catalog_texts,
    load_retriever,
    policy_model_path,
)
from trainer.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "chorus_icecat"
OUT = ROOT / "bench" / "results"
METHODS = ("raw", "base", "grpo", "ospo")


def ci(values: list[float] | np.ndarray) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(list(np.asarray(values, dtype=float)), seed=0)
    return {"mean": mean, "lo": lo, "hi": hi}


def aggregate(per_query: dict[str, list[dict[str, dict[str, list[float]]]]]) -> dict[str, Any]:
    """method -> retriever -> metric -> {mean, lo, hi, seed_means}; plus paired deltas."""
    out: dict[str, Any] = {}
    averaged: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for method, runs in per_query.items():
        if not runs:
            continue
        averaged[method] = {}
        out[method] = {"seeds": len(runs)}
        for retriever in runs[0]:
            out[method][retriever] = {}
            averaged[method][retriever] = {}
            for metric in METRICS:
                values = np.array([run[retriever][metric] for run in runs])  # (seeds, queries)
                avg = values.mean(axis=0)
                averaged[method][retriever][metric] = avg
                out[method][retriever][metric] = {
                    **ci(avg),
                    "seed_means": values.mean(axis=1).tolist(),
                }
    deltas: dict[str, Any] = {}
    for a, b in (("ospo", "grpo"), ("ospo", "raw"), ("grpo", "raw"), ("ospo", "base"),
                 ("grpo", "base"), ("base", "raw")):  # fmt: skip
        if a in averaged and b in averaged:
            deltas[f"{a}-{b}"] = {
                r: ci(averaged[a][r]["ndcg@10"] - averaged[b][r]["ndcg@10"]) for r in averaged[a]
            }
    out["delta_ndcg@10"] = deltas
    return out


def plot(summary: dict[str, Any], curves: dict[str, list[list[float]]], path: Path) -> None:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    methods = [m for m in METHODS if m in summary]
    retrievers = [r for r in ("dense", "dense_pooled", "bm25") if r in summary.get("raw", {})]
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        means = [summary[method][r]["ndcg@10"]["mean"] for r in retrievers]
        lo = [summary[method][r]["ndcg@10"]["lo"] for r in retrievers]
        hi = [summary[method][r]["ndcg@10"]["hi"] for r in retrievers]
        xs = np.arange(len(retrievers)) + i * width
        err = [np.subtract(means, lo), np.subtract(hi, means)]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=method)
    ax.set_xticks(np.arange(len(retrievers)) + width * (len(methods) - 1) / 2, retrievers)
    ax.set_ylabel("NDCG@10 (held-out Chorus queries, 95% CI)")
    ax.set_title("Greedy rewrites by policy and retriever")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    for algo, runs in curves.items():
        if runs:
            n = min(len(r) for r in runs)
            mean = np.mean([r[:n] for r in runs], axis=0)
            ax2.plot(
                np.arange(1, n + 1), mean, marker="o" if n < 30 else None,
                label=f"{algo} (mean of {len(runs)} seeds)",
            )  # fmt: skip
    ax2.set_xlabel("step")
    ax2.set_ylabel("training reward (NDCG@10 of samples)")
    ax2.set_title("Training reward")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="when sampling in training")
    ap.add_argument("--eval-max-new-tokens", type=int, default=48, help="greedy, as serving")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--estimator", default="auto")
    ap.add_argument("--reward-mode", default="full", choices=["full", "pooled"])
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None, help="first N held-out queries")
    ap.add_argument("--no-bm25", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--index-dir", type=Path, default=None, help="default: private Icecat index")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out-dir", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    started = time.perf_counter()
    timings: dict[str, float] = {}

    settings = get_settings()
    if args.index_dir is None:
        retriever, texts = build_catalog_index(
            OUT / "tmp" / "icecat-index", [(DATA / "icecat_products", "icecat")], settings
        )
    else:
        retriever = load_retriever(settings, args.index_dir)
        texts = {
            pid: t for pid, (_, t) in catalog_texts(DATA / "icecat_products", "icecat").items()
        }
    bm25 = None if args.no_bm25 else bm25_for(retriever, texts)
    model_path = policy_model_path(settings, args.model)
    examples = restrict_to_index(
        load_examples(str(DATA / "Broad_Query_Set_rated.csv")), retriever.row_of
    )
    train_ex, val_ex = split_examples(examples, args.val_fraction, args.split_seed)
    val_ex = val_ex[: args.eval_limit] if args.eval_limit else val_ex
    timings["setup_s"] = time.perf_counter() - started

    def evaluate(policies: list[str]) -> dict[str, Any]:
        return evaluate_policies(
            policies, val_ex, retriever, model_path, bm25=bm25,
            max_new_tokens=args.eval_max_new_tokens,
        )  # fmt: skip

    t = time.perf_counter()
    baseline = evaluate(["raw", "base"])
    timings["eval_raw_base_s"] = time.perf_counter() - t
    per_query: dict[str, list[Any]] = {
        "raw": [baseline["per_query"]["raw"]],
        "base": [baseline["per_query"]["base"]],
        "grpo": [],
        "ospo": [],
    }
    curves: dict[str, list[list[float]]] = {"grpo": [], "ospo": []}
    runs: list[dict[str, Any]] = []
    out_json = args.out_dir / "quality.json"

    def write() -> None:
        summary = aggregate(per_query)
        report = {
            "summary": summary,
            "runs": runs,
            "setup": {
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "seeds": seeds,
                "model": str(model_path),
                "index_version": retriever.version,
                "products": len(retriever.ids),
                "train_queries": len(train_ex),
                "eval_queries": len(val_ex),
                "eval_query_keys": [e.key for e in val_ex],
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "device": "cpu",
                "timings": timings,
                "total_s": time.perf_counter() - started,
            },
            "rewrites": {"raw": baseline["rewrites"]["raw"], "base": baseline["rewrites"]["base"]},
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=1))
        plot(summary, curves, args.out_dir / "quality.png")

    write()
    for seed in seeds:
        for algo in ("grpo", "ospo"):
            config = TrainConfig(
                algo=algo,  # type: ignore[arg-type]
                steps=args.steps,
                group_size=args.group_size,
                prompts_per_step=args.prompts_per_step,
                max_new_tokens=args.max_new_tokens,
                lr=args.lr,
                lora_r=args.lora_rank,
                lora_alpha=args.lora_alpha,
                estimator=args.estimator,
                reward_mode=args.reward_mode,
                seed=seed,
            )
            t = time.perf_counter()
            run_dir = OUT / "tmp" / "quality" / f"{algo}-s{seed}"
            result = train(config, retriever, train_ex, model_path, run_dir)
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            report = evaluate([str(result.adapter_dir)])
            eval_s = time.perf_counter() - t
            per_query[algo].append(report["per_query"][str(result.adapter_dir)])
            steps = [m for m in result.metrics if "reward_mean" in m]
            curves[algo].append([m["reward_mean"] for m in steps])
            summary = report["policies"][str(result.adapter_dir)]
            runs.append({
                "algo": algo,
                "seed": seed,
                "adapter": str(result.adapter_dir),
                "train_s": train_s,
                "eval_s": eval_s,
                "step_s_mean": float(np.mean([m["step_s"] for m in steps])),
                "dense_ndcg@10": summary["dense"]["ndcg@10"]["mean"],
                "parse_rate": summary["parse_rate"],
                "reward_curve": curves[algo][-1],
                "rewrites": report["rewrites"][str(result.adapter_dir)],
            })  # fmt: skip
            print(
                f"{algo} seed {seed}: {train_s:.0f} s training, {eval_s:.0f} s eval, "
                f"dense NDCG@10 {summary['dense']['ndcg@10']['mean']:.3f}",
                flush=True,
            )
            write()
    print(json.dumps(aggregate(per_query)["delta_ndcg@10"], indent=1))
    print(f"total {time.perf_counter() - started:.0f} s; report: {out_json}")


if __name__ == "__main__":
    main()
