"""GPU benchmark: one OSPO / GRPO training step, and the retrieval reward path at scale.

Writes ``bench/results/gpu_step.json`` (``--tiny``: ``bench/results/tmp/gpu_step_tiny.json``)
and prints it. Made for the lent GPU machine: PyTorch, transformers and peft, but no vLLM, no
faiss, no database, no matplotlib, no model weights and no network. Besides those it imports
numpy and the project's ``trainer.training`` (its step needs nothing more: the reward is a
function it is given); tokenizers come from files carried in ``bench/gpu_assets/`` (SmolLM2-135M-
Instruct's and all-MiniLM-L6-v2's tokenizer files, both Apache-2.0).

Run on the GPU machine:   python bench/gpu_step.py
CPU smoke test (minutes): .venv/bin/python bench/gpu_step.py --tiny

What is measured, in this order (the most valuable numbers first, so a time budget that runs
out still leaves them): Qwen2.5-1.5B GRPO, 1.5B OSPO, 7B GRPO, 7B OSPO, then the retrieval path.

1. One training step: the project's own ``trainer.training.step.train_step``, the one
   ``ospo train`` and the online update run, with the serving prompt
   (``service.policy.prompt.DEFAULT_PROMPT``) and the project's parser, timed phase by phase
   through the step's ``phase`` hook (``torch.cuda.synchronize`` around each;
   trainer/training/phases.py): generate (``model.generate``,
   P prompts × G samples, pure sampling at temperature τ) · decode (completion text, parsed
   rewrite, per-token character offsets) · old_logprobs (log-softmax of the sampling logits
   ``generate`` returned) · reward (one call of the reward function below on every rollout's
   search text) · attribution (OSPO only: every coalition text of every rollout of the step
   valued in one call, through ``trainer.attribution.attribute_batch``) · advantages · update
   (forward, clipped surrogate loss, backward over micro-batches, grad-norm clip, AdamW step on
   the LoRA weights; rows whose advantages are all zero are skipped, as in training).
   One untimed warm-up step per (model, algorithm) precedes ``--steps`` timed ones.
2. The reward path alone with realistic rewrites (hard-coded phrase templates): coalition texts
   per second valued one by one (one embed + one search per text, as a naive per-coalition
   implementation would), batched (all coalition texts of a step, duplicates included), and
   batched with the text cache (each distinct text embedded and searched once), per catalogue
   size; plus the CPU cost of the estimators themselves.

Every TrainConfig field but ``algo`` (``--algos`` runs both) is an option with the field's help
(trainer/training/config_options.py); LoRA ranks, targets, G, P, the estimators and the
advantages are the project's. This benchmark's own defaults: P=4, G=8, 2 timed steps, LoRA r=32, lr
5e-6 (``--tiny``: P=2, G=4, 8 new tokens, 1 step). The warm-start, evaluation and retriever fields
have no effect here.

What is and is not representative (numbers are about speed and memory, never quality):
* Policies are Qwen2.5 architectures (``Qwen2Config`` with the published sizes) with RANDOM
  weights in bf16. Throughput and memory do not depend on the weight values. The vocabulary is
  the carried SmolLM2 tokenizer's (49,152 tokens) instead of Qwen's 151,936, so prompts are
  encoded and samples decoded by a real tokenizer; that removes ~0.16B parameters from the
  tied 1.5B embedding and ~0.74B from the untied 7B embedding + LM head, and shrinks the logits.
* Random weights sample near-uniform token salad, which the serving parser rejects (no item
  ends before the token limit): such a step would have no rewrite to attribute and no advantage
  to update with. So the stand-in policy gets a fixed logit bias (``--rewrite-bias``, added to
  the LM head's output, in sampling and training alike) towards the tokens of the words below,
  commas and the end token: completions become comma-separated word soup of a trained policy's
  length and shape, which the parser keeps as additions; the ones it cannot use score the raw
  query and have no players (``parse_rate`` in the results). The bias costs one addition on
  the logits.
* Reward: an all-MiniLM-L6-v2-architecture encoder (BertModel from the carried config.json,
  random weights, mean pooling, L2 norm) and a synthetic catalogue of random unit vectors on
  the GPU; retrieval is ``torch.topk`` of ``q @ P.T`` (exact search, what faiss-gpu flat does);
  NDCG@k with linear gains against per-query graded targets (half drawn near the query's own
  embedding so some rewards are non-zero, half random). Reward values are meaningless; their
  cost is real.

This file is the step section and the driver; gpu_models.py builds the stand-in models and
tokenizers, gpu_retrieval.py is the reward engine and section 2, gpu_run.py holds the run's
options, clock, budget and writer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # also when run by runpy (tests/processes.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gpu_run  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from gpu_models import (  # noqa: E402
    QUERIES,
    QWEN25,
    build_encoder,
    build_policy,
    encoder_tokenizer,
    policy_tokenizer,
)
from gpu_retrieval import RetrievalEngine, ValueCache, retrieval_scaling  # noqa: E402
from gpu_run import (  # noqa: E402
    GIB,
    Phases,
    elapsed,
    error_record,
    free_memory,
    over_budget,
    peak_gib,
    r,
    reset_peak,
    sync,
    versions,
    write,
)
from harness.results import RESULTS  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.policy import make_optimizer  # noqa: E402
from trainer.training.step import train_step  # noqa: E402

# TrainConfig fields where this benchmark's defaults differ from the project's (a full run),
# and where --tiny's differ from those.
CONFIG_DEFAULTS = {"prompts_per_step": 4, "steps": 2, "lora_r": 32, "lr": 5e-6}
TINY_CONFIG = {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "steps": 1}


def timed_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    tok: PreTrainedTokenizerFast,
    engine: RetrievalEngine,
    config: TrainConfig,
    step_seed: int,
) -> dict[str, Any]:
    """``trainer.training.step.train_step`` on P of the QUERIES, rewarded by ``engine``."""
    P = config.prompts_per_step
    queries = [QUERIES[(step_seed * P + i) % len(QUERIES)] for i in range(P)]
    cache = ValueCache() if gpu_run.ARGS.text_cache else None
    ph = Phases(gpu_run.DEVICE, engine)
    out = train_step(
        model,
        tok,
        optimizer,
        [(q, QUERIES.index(q)) for q in queries],  # the key is the query's row in the targets
        lambda pairs: engine.values(pairs, cache),
        config,
        np.random.default_rng(step_seed),
        seed=step_seed,
        phase=ph,
    )
    batch, rewards = out.batch, out.rewards
    step_s = sum(ph.seconds.values())
    comp_tokens = batch.n_tokens
    seq_tokens = int(batch.attention_mask.sum())
    rec: dict[str, Any] = {
        "phase_s": ph.seconds,
        "phase_peak_gib": ph.peak,
        "step_s": step_s,
        "completion_tokens": comp_tokens,
        "sequence_tokens": seq_tokens,
        "generated_positions": int(batch.completion_mask.numel()),
        "prompt_tokens": batch.prompt_length,
        "generate_tokens_per_s": comp_tokens / max(ph.seconds["generate"], 1e-9),
        "update_tokens_per_s": comp_tokens / max(ph.seconds["update"], 1e-9),
        "update_seq_tokens_per_s": seq_tokens / max(ph.seconds["update"], 1e-9),
        "reward_mean": float(rewards.mean()),
        "reward_nonzero_frac": float((rewards > 0).mean()),
        "parse_rate": float(np.mean([ro.rewrite is not None for ro in batch.rollouts])),
        "active_rows": out.stats["active_rows"],
        "reward_value_stats": {k: r(v) for k, v in ph.engine_stats["reward"].items()},
        "loss": out.stats["loss"],
        "clip_frac": out.stats["clip_frac"],
        "attribution": {},
    }
    if config.algo == "ospo":
        present = [a for a in out.attributions if a is not None]
        counted = Counter(ph.engine_stats["attribution"])
        adv = out.advantages.float().cpu().numpy()
        lengths = batch.completion_mask.sum(1).tolist()
        rec["attribution"] = {
            "coalitions_requested": int(sum(a.n_evaluations for a in present)),
            "pairs_valued": int(counted["pairs_valued"]),
            "texts_embedded": int(counted["texts_embedded"]),
            "value_calls": int(counted["calls"]),
            "players_mean": r(out.stats["players_mean"]),
            "players_max": int(max((len(a.segments) for a in present), default=0)),
            "estimators": dict(Counter(a.estimator for a in present)),
            "embed_s": r(counted["embed_s"]),
            "tokenize_s": r(counted["tokenize_s"]),
            "search_s": r(counted["search_s"]),
            "score_s": r(counted["score_s"]),
            # rollouts whose advantage OSPO actually moved between tokens
            "rollouts_shaped": sum(
                1 for b, n in enumerate(lengths) if n and np.ptp(adv[b, :n]) > 1e-12
            ),
        }
    return rec


def summarise_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    phases = steps[0]["phase_s"].keys()
    phase_s = {k: r(float(np.mean([s["phase_s"][k] for s in steps]))) for k in phases}
    step_s = float(np.mean([s["step_s"] for s in steps]))
    peaks = {}  # GiB, max over the timed steps; None on CPU
    for k in phases:
        seen = [s["phase_peak_gib"][k] for s in steps if s["phase_peak_gib"][k] is not None]
        peaks[k] = max(seen) if seen else None
    out: dict[str, Any] = {
        "steps_timed": len(steps),
        "phase_s": phase_s,
        "step_s": r(step_s),
        "step_s_each": [r(s["step_s"]) for s in steps],
        "attribution_share": r((phase_s.get("attribution") or 0.0) / step_s) if step_s else None,
        "phase_peak_gib": peaks,
    }
    for key in (
        "generate_tokens_per_s",
        "update_tokens_per_s",
        "update_seq_tokens_per_s",
        "completion_tokens",
        "sequence_tokens",
        "reward_mean",
        "reward_nonzero_frac",
        "parse_rate",
        "active_rows",
        "loss",
        "clip_frac",
    ):
        out[key] = r(float(np.mean([s[key] for s in steps])), 3)
    out["prompt_tokens"] = steps[0]["prompt_tokens"]
    out["generated_positions"] = steps[0]["generated_positions"]
    att = [s["attribution"] for s in steps if s["attribution"]]
    if att:
        numeric = [k for k, v in att[0].items() if isinstance(v, int | float)]
        out["attribution"] = {k: r(float(np.mean([a[k] for a in att])), 3) for k in numeric}
        out["attribution"]["estimators"] = dict(
            sum((Counter(a["estimators"]) for a in att), Counter())
        )
    out["reward_value_stats_last"] = steps[-1]["reward_value_stats"]
    return out


def run_model(name: str, algos: Sequence[str], engine: RetrievalEngine, state: dict) -> None:
    """Build one policy, then warm up + time each algorithm on it; results go into state."""
    device = gpu_run.DEVICE
    tok = policy_tokenizer()
    keys = [f"qwen2.5-{name}/{algo}" for algo in algos]
    if over_budget():
        for key in keys:
            state["steps"][key] = {"status": "skipped", "reason": "time budget spent"}
        return
    model = None
    try:
        free_memory(device)
        reset_peak(device)
        t0 = time.perf_counter()
        model, info = build_policy(name, gpu_run.ARGS.config, tok, device)
        sync(device)
        info["build_s"] = r(time.perf_counter() - t0, 2)
        if device.type == "cuda":
            info["weights_gib"] = r(torch.cuda.memory_allocated(device) / GIB, 3)
        state["models"][f"qwen2.5-{name}"] = info
    except Exception as exc:  # OOM or a version incompatibility: record and go on
        rec = error_record(exc)
        for key in keys:
            state["steps"][key] = dict(rec, phase="build")
        model = None
        free_memory(device)
        write(state)
        return
    for algo, key in zip(algos, keys, strict=True):
        if over_budget():
            state["steps"][key] = {"status": "skipped", "reason": "time budget spent"}
            continue
        optimizer = None
        try:
            config = dataclasses.replace(gpu_run.ARGS.config, algo=algo)
            optimizer = make_optimizer(model, config)
            reset_peak(device)
            t0 = time.perf_counter()
            for w in range(gpu_run.ARGS.warmup):
                timed_step(model, optimizer, tok, engine, config, step_seed=1000 + w)
            warm_s = time.perf_counter() - t0
            steps = []
            for s in range(config.steps):
                steps.append(timed_step(model, optimizer, tok, engine, config, step_seed=s))
                if over_budget():
                    break
            rec = {"status": "ok", "model": f"qwen2.5-{name}", "algo": algo}
            rec["warmup_s"] = r(warm_s, 2)
            rec.update(summarise_steps(steps))
            rec["peak_memory_gib"] = peak_gib(device)
            state["steps"][key] = rec
        except Exception as exc:
            state["steps"][key] = dict(error_record(exc), model=f"qwen2.5-{name}", algo=algo)
        finally:
            optimizer = None
            if model is not None:
                model.zero_grad(set_to_none=True)
            free_memory(device)
        write(state)
        print(f"[{elapsed():6.1f}s] {key}: {short(state['steps'][key])}", flush=True)
    del model
    free_memory(device)


def short(rec: dict[str, Any]) -> str:
    if rec.get("status") != "ok":
        return f"{rec.get('status')} {rec.get('error', rec.get('reason', ''))}"
    return (
        f"step {rec['step_s']}s phases {rec['phase_s']} peak {rec['peak_memory_gib']} GiB "
        f"attribution share {rec['attribution_share']}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    strs = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny shapes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new configs")
    p.add_argument("--models", type=strs, default=["1.5b", "7b"], help=f"of {list(QWEN25)}")
    p.add_argument("--algos", type=strs, default=["grpo", "ospo"])
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before --steps timed")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa | eager | ...")
    p.add_argument(
        "--rewrite-bias", type=float, default=10.0,
        help="logit bias of rewrite words, commas and the end token (0: uniform token salad)",
    )  # fmt: skip
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false")
    p.add_argument("--targets-per-query", type=int, default=20)
    p.add_argument("--catalog-size", type=int, default=None, help="for the step (100000)")
    p.add_argument("--scale-catalog-sizes", type=ints, default=None, help="100000,1000000")
    p.add_argument("--scale-prompts", type=ints, default=None, help="rollouts = P × G; 4,16")
    p.add_argument("--one-by-one-sample", type=int, default=None, help="texts timed (256)")
    p.add_argument("--repeats", type=int, default=2, help="best of N for retrieval timings")
    p.add_argument("--embed-batch", type=int, default=1024)
    p.add_argument("--embed-max-length", type=int, default=128)
    p.add_argument("--encoder-dtype", choices=("bfloat16", "float16", "float32"), default=None)
    p.add_argument("--skip-steps", action="store_true", help="retrieval section only")
    p.add_argument("--skip-retrieval", action="store_true", help="training steps only")
    add_config_arguments(p, TrainConfig, CONFIG_DEFAULTS, exclude=("algo",))
    a = p.parse_args(argv)
    try:
        a.config = config_from_args(
            TrainConfig, a, {**CONFIG_DEFAULTS, **(TINY_CONFIG if a.tiny else {})}
        )
    except (ValueError, TypeError) as e:
        p.error(str(e))
    defaults = {  # full run, --tiny
        "catalog_size": (100_000, 2_000),
        "scale_catalog_sizes": ([100_000, 1_000_000], [2_000, 5_000]),
        "scale_prompts": ([4, 16], [2]),
        "one_by_one_sample": (256, 16),
        "budget_s": (420.0, 600.0),
    }
    for k, (full, tiny) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, tiny if a.tiny else full)
    if a.out is None:
        a.out = RESULTS / ("tmp/gpu_step_tiny.json" if a.tiny else "gpu_step.json")
    unknown = [m for m in a.models if m not in QWEN25]
    if unknown or any(x not in ("grpo", "ospo") for x in a.algos):
        p.error(f"unknown model/algo in {a.models} / {a.algos}")
    if a.config.steps < 1:
        p.error("--steps: at least one timed step")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    ARGS = gpu_run.ARGS = parse_args(argv)
    config: TrainConfig = ARGS.config
    placement = config.placement()  # --device/--dtype: TrainConfig's, resolved as training does
    device = gpu_run.DEVICE = placement.device
    DTYPE = gpu_run.DTYPE = placement.dtype
    enc_dtype = getattr(torch, ARGS.encoder_dtype) if ARGS.encoder_dtype else DTYPE
    torch.manual_seed(config.seed)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    state: dict[str, Any] = {
        "benchmark": "bench/gpu_step.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device": str(device),
        "gpu_memory_gib": (
            r(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
            if device.type == "cuda"
            else None
        ),
        "versions": versions(),
        "config": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(ARGS).items()
                if k != "config" and k not in train_fields
            },
            "train_config": dataclasses.asdict(config),
            "dtype": str(DTYPE),
            "encoder_dtype": str(enc_dtype),
            "rollouts_per_step": config.prompts_per_step * config.group_size,
            "lora_targets": list(config.lora_targets),
            "queries": list(QUERIES),
        },
        "notes": [
            "Random weights: speed and memory are real, rewards/rewrites are meaningless.",
            "The step is trainer.training.step.train_step with the serving prompt and parser.",
            "Policy vocabulary: the carried SmolLM2 tokenizer's (Qwen2.5 has 151936).",
            "The random policy's logits are biased towards rewrite words, commas and the end "
            "token (rewrite_bias), so completions parse as word-soup additions (parse_rate); "
            "unusable ones score the raw query and have no players.",
            "Retrieval: random MiniLM-architecture encoder, exact torch.topk over random unit "
            "vectors, NDCG@k with linear gains.",
            "Times in seconds, memory in GiB (torch.cuda.max_memory_allocated).",
        ],
        "models": {},
        "steps": {},
        "retrieval": {},
    }
    print(
        f"device {state['card']} torch {torch.__version__} transformers "
        f"{transformers.__version__} peft {peft.__version__}",
        flush=True,
    )
    write(state)

    etok = encoder_tokenizer()
    encoder = build_encoder(ARGS.tiny, device, enc_dtype)
    if not ARGS.skip_steps:
        engine = RetrievalEngine(encoder, etok, ARGS.catalog_size, device, seed=config.seed)
        for name in ARGS.models:
            run_model(name, ARGS.algos, engine, state)
        del engine
        free_memory(device)
    if not ARGS.skip_retrieval:
        retrieval_scaling(encoder, etok, state)
    state["finished"] = True
    write(state)
    print(json.dumps(state, indent=2, default=str))
    print(f"wrote {ARGS.out} in {elapsed():.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
