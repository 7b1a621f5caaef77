"""Quality benchmark → bench/results/quality.json + quality.png.

Does a learned rewrite beat the shopper's own words? Grades are human + assessed (the judged
pools completed, service/grades.py), and judged@10, the abstention rate and the queries each
policy helps or hurts are reported beside NDCG; ``--prompt-version`` picks the prompt every
policy is trained and scored with. On the Chorus validation split (the split
`ospo eval` and the online update use: 30% of the judged queries by hash, split seed 0) over the
serving index (19,406 Icecat + 392 ESCI products), and on the ESCI sample's queries (never
trained on: an out-of-domain check), with greedy rewrites as serving produces them:

    raw      the shopper's query, no rewrite (dense, lexical and hybrid retrieval)
    base     SmolLM2-135M-Instruct, expansion prompt, no adapter
    warm     base + LoRA after the rejection-sampling warm start only
             (trainer/training/warmstart.py)
    grpo     warm + ``--steps`` GRPO steps
    ospo     warm + ``--steps`` OSPO steps — same seeds, prompts, G, P: equal rollouts

for each of ``--seeds``. Training rewards use hybrid retrieval (what serving runs); every policy
is also scored on dense-only and lexical-only retrieval, which training never saw (the
unseen-retriever check). Per method the per-query values are averaged over seeds, then a
percentile bootstrap over queries gives the 95% CI; paired per-query differences (each policy
− raw hybrid, OSPO − GRPO) get their own intervals; per-seed means are listed too.

Every training knob is TrainConfig's default unless a flag says otherwise: every TrainConfig
field but ``algo`` and ``seed`` (both swept here) is a flag, with the field's help
(trainer/training/config_options.py); ``--torch-threads`` defaults to 2 here. Results are
rewritten after every trained adapter, so an interrupted run still leaves what it finished. The
recorded run (≈17 min per seed on this 2-core CPU; the GRPO/OSPO adapters scored on the Chorus
validation split only, to fit the time):
    .venv/bin/python bench/quality.py --seeds 0,1,2 --steps 4 --rl-eval chorus_val
Adapters and training curves are kept under bench/results/tmp/NAME/, NAME being the results
folder's (``--out-dir``) name.
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

from service.retrieval.metrics import bootstrap_ci  # noqa: E402
from service.settings import get_settings  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.data import load_examples, restrict_to_index, split_examples  # noqa: E402
from trainer.training.evaluate import METRICS, TIE, evaluate_policies  # noqa: E402
from trainer.training.resources import load_retriever, policy_model_path  # noqa: E402
from trainer.training.train import train, training_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
OUT = ROOT / "bench" / "results"
METHODS = ("raw", "base", "warm", "grpo", "ospo")
REFERENCE = ("raw", "hybrid")  # every delta is paired against raw queries on hybrid retrieval
CONFIG_DEFAULTS = {"torch_threads": 2}  # this 2-core machine; evaluation runs with it too


def ci(values: list[float] | np.ndarray) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(list(np.asarray(values, dtype=float)), seed=0)
    return {"mean": mean, "lo": lo, "hi": hi}


def aggregate(per_query: dict[str, list[dict[str, dict[str, list[float]]]]]) -> dict[str, Any]:
    """method -> retriever -> metric -> {mean, lo, hi, seed_means}; plus paired deltas."""
    out: dict[str, Any] = {}
    averaged: dict[str, dict[str, np.ndarray]] = {}
    for method, runs in per_query.items():
        if not runs:
            continue
        out[method] = {"seeds": len(runs)}
        averaged[method] = {}
        for retriever in runs[0]:
            out[method][retriever] = {}
            for metric in METRICS:
                values = np.array([run[retriever][metric] for run in runs])  # (seeds, queries)
                out[method][retriever][metric] = {
                    **ci(values.mean(axis=0)),
                    "seed_means": values.mean(axis=1).tolist(),
                }
            averaged[method][retriever] = np.array(
                [run[retriever]["ndcg@10"] for run in runs]
            ).mean(axis=0)
    ref = averaged.get(REFERENCE[0], {}).get(REFERENCE[1])
    deltas: dict[str, Any] = {}
    for method, by_retriever in averaged.items():
        if ref is not None:
            deltas[f"{method}-raw_hybrid"] = {r: ci(v - ref) for r, v in by_retriever.items()}
        if method != "raw" and "raw" in averaged:
            deltas[f"{method}-raw_same_retriever"] = {
                r: ci(v - averaged["raw"][r]) for r, v in by_retriever.items()
            }
    if "raw" in averaged:
        # how many queries each method moves, seed-averaged, against raw on the same retriever
        out["gains_losses"] = {
            m: {r: {"gains": int((v - averaged["raw"][r] > TIE).sum()),
                    "losses": int((v - averaged["raw"][r] < -TIE).sum())}
                for r, v in by_r.items()}
            for m, by_r in averaged.items() if m != "raw"
        }  # fmt: skip
    if "ospo" in averaged and "grpo" in averaged:
        deltas["ospo-grpo"] = {
            r: ci(averaged["ospo"][r] - averaged["grpo"][r]) for r in averaged["ospo"]
        }
    out["delta_ndcg@10"] = deltas
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    sets = [name for name in ("chorus_val", "esci") if name in report["summary"]]
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(6 * (len(sets) + 1), 4.4))
    for ax, name in zip(axes, sets, strict=False):
        summary = report["summary"][name]
        methods = [m for m in METHODS if m in summary]
        retrievers = [r for r in ("hybrid", "dense", "lexical") if r in summary["raw"]]
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            stats = [summary[method][r]["ndcg@10"] for r in retrievers]
            means = [s["mean"] for s in stats]
            err = [
                [m - s["lo"] for m, s in zip(means, stats, strict=True)],
                [s["hi"] - m for m, s in zip(means, stats, strict=True)],
            ]
            ax.bar(
                np.arange(len(retrievers)) + i * width,
                means,
                width,
                yerr=err,
                capsize=2,
                label=method,
            )
        ax.set_xticks(np.arange(len(retrievers)) + width * (len(methods) - 1) / 2, retrievers)
        ax.set_ylim(0, 1)
        ax.set_ylabel("NDCG@10 (95% CI over queries)")
        ax.set_title(f"{name}: {report['setup'][name + '_queries']} queries")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[-1]
    for algo in ("grpo", "ospo"):
        curves = [run["reward_curve"] for run in report["runs"] if run["method"] == algo]
        if curves:
            n = min(len(c) for c in curves)
            ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in curves], axis=0), marker="o",
                    label=f"{algo} (mean of {len(curves)} seeds)")  # fmt: skip
    ax.set_xlabel("step after the warm start")
    ax.set_ylabel("training reward (NDCG@10 of samples, hybrid)")
    ax.set_title("Training reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument(
        "--train-esci", action="store_true",
        help="also train on the ESCI sample's queries (every labelled source)",
    )  # fmt: skip
    ap.add_argument("--out-dir", type=Path, default=OUT)
    ap.add_argument(
        "--rl-eval", default="chorus_val,esci",
        help="eval sets scored for the GRPO/OSPO adapters (comma-separated)",
    )  # fmt: skip
    add_config_arguments(ap, TrainConfig, CONFIG_DEFAULTS, exclude=("algo", "seed"))
    args = ap.parse_args()
    base_config = config_from_args(TrainConfig, args, CONFIG_DEFAULTS)
    if base_config.torch_threads:
        torch.set_num_threads(base_config.torch_threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rl_sets = [name for name in args.rl_eval.split(",") if name]
    started = time.perf_counter()

    settings = get_settings()
    retriever = load_retriever(settings)  # the serving index (`make up` / `ospo bootstrap`)
    model_path = policy_model_path(settings, args.model)
    chorus = restrict_to_index(
        load_examples(str(DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv")), retriever.row_of
    )
    train_ex, val_ex = split_examples(chorus, args.val_fraction, args.split_seed)
    esci = restrict_to_index(
        load_examples(str(DATA / "esci" / "sample_2c_full_data.csv"), fmt="esci"), retriever.row_of
    )
    if args.train_esci:
        train_ex = [*train_ex, *esci]  # more signal per step; ESCI is then in-domain
    eval_sets = {"chorus_val": val_ex, "esci": esci}

    per_query: dict[str, dict[str, list[Any]]] = {
        name: {m: [] for m in METHODS} for name in eval_sets
    }
    rewrites: dict[str, dict[str, Any]] = {name: {} for name in eval_sets}
    abstain: dict[str, dict[str, list[float]]] = {}
    runs: list[dict[str, Any]] = []
    out_json = args.out_dir / "quality.json"
    # one folder per results folder, so a second run never overwrites the first one's adapters
    adapters = OUT / "tmp" / args.out_dir.resolve().name

    def evaluate(method: str, policy: str, sets: list[str] | None = None) -> dict[str, float]:
        """Score ``policy`` on the eval sets; returns hybrid NDCG@10 per set."""
        headline = {}
        for name, examples in eval_sets.items():
            if sets is not None and name not in sets:
                continue
            prompt = training_prompt(base_config, retriever, [ex.query for ex in examples])
            report = evaluate_policies(
                [policy], examples, retriever, model_path, prompt=prompt,
                entry=base_config.expansion_entry,
            )  # fmt: skip
            abstain.setdefault(name, {}).setdefault(method, []).append(
                report["policies"][policy]["abstain"]
            )
            per_query[name][method].append(report["per_query"][policy])
            rewrites[name].setdefault(method, []).append(report["rewrites"][policy])
            headline[name] = report["policies"][policy]["hybrid"]["ndcg@10"]["mean"]
        return headline

    def write() -> None:
        report = {
            "summary": {name: aggregate(pq) for name, pq in per_query.items()},
            "runs": runs,
            "abstain": abstain,
            "setup": {
                "seeds": seeds,
                "command": " ".join(sys.argv),
                "rl_eval_sets": rl_sets,
                "train_config": dataclasses.asdict(base_config),
                "model": str(model_path),
                "index_version": retriever.version,
                "products": len(retriever.ids),
                "fusion": dataclasses.asdict(retriever.fusion),
                "train_queries": len(train_ex),
                "chorus_val_queries": len(val_ex),
                "esci_queries": len(esci),
                "chorus_val_keys": [e.key for e in val_ex],
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
                "machine": platform.processor() or platform.machine(),
                "device": "cpu",
                "total_s": time.perf_counter() - started,
            },
            "rewrites": rewrites,
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=1))
        plot(report, args.out_dir / "quality.png")

    for method in ("raw", "base"):
        t = time.perf_counter()
        headline = evaluate(method, method)
        runs.append(
            {"method": method, "eval_s": time.perf_counter() - t, "hybrid_ndcg@10": headline}
        )
        print(f"{method}: {headline}", flush=True)
        write()

    for seed in seeds:
        t = time.perf_counter()
        warm_cfg = dataclasses.replace(base_config, steps=0, seed=seed)
        warm = train(warm_cfg, retriever, train_ex, model_path, adapters / f"warm-s{seed}")
        warm_s = time.perf_counter() - t
        headline = evaluate("warm", str(warm.adapter_dir))
        ws = next(m for m in warm.metrics if m.get("phase") == "warm_start")
        runs.append({"method": "warm", "seed": seed, "train_s": warm_s, "warm_start": ws,
                     "hybrid_ndcg@10": headline})  # fmt: skip
        print(f"warm seed {seed}: {warm_s:.0f} s, {headline}, kept {ws['rs_kept']:.0f}", flush=True)
        write()
        for algo in ("grpo", "ospo"):
            cfg = dataclasses.replace(
                base_config, algo=algo, seed=seed, rs_samples=0, warm_start=str(warm.adapter_dir)
            )
            t = time.perf_counter()
            result = train(cfg, retriever, train_ex, model_path, adapters / f"{algo}-s{seed}")
            train_s = time.perf_counter() - t
            headline = evaluate(algo, str(result.adapter_dir), rl_sets)
            steps = [m for m in result.metrics if "reward_mean" in m]
            runs.append({
                "method": algo,
                "seed": seed,
                "train_s": train_s,
                "step_s_mean": float(np.mean([m["step_s"] for m in steps])),
                "rollouts": len(steps) * cfg.group_size * cfg.prompts_per_step,
                "reward_curve": [m["reward_mean"] for m in steps],
                "hybrid_ndcg@10": headline,
            })  # fmt: skip
            print(f"{algo} seed {seed}: {train_s:.0f} s, {headline}", flush=True)
            write()
    print(json.dumps(aggregate(per_query["chorus_val"])["delta_ndcg@10"], indent=1))
    print(f"total {time.perf_counter() - started:.0f} s; report: {out_json}")


if __name__ == "__main__":
    main()
