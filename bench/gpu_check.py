"""The prepared GPU check of the product's training device path (issue 21).

Writes ``bench/results/gpu_check.json`` (``--tiny``: ``bench/results/tmp/gpu_check_tiny.json``).

Run on the lent GPU machine (≤ 8 min; torch with CUDA, transformers, peft, sentence-transformers;
no vLLM, no faiss, no weights, no network):   python bench/gpu_check.py
CPU smoke test (seconds, part of ``make test``): .venv/bin/python bench/gpu_check.py --tiny

What runs is what a GPU worker runs, not a stand-in: the policy is made trainable by
``trainer.training.policy.attach_lora`` on the device and dtype
``TrainConfig.placement()`` resolves (``--device``/``--dtype``, default auto: the GPU in
bfloat16), every step is ``trainer.training.step.train_step``, and the reward embeds with the
project's ``Embedder`` on the device and ranks with ``service.retrieval.exact.ExactSearch`` there
(the GPU reward path without faiss). In order, most valuable first (a spent ``--budget-s`` skips
what is left, and says so):

1. parity  SmolLM2-135M's architecture, random weights built on the CPU. One OSPO step on the CPU
           in float32 samples, scores (a fixed function of the text) and updates; then the same
           batch and token advantages go through the device's update in float32 and in
           bfloat16 from the same LoRA initialisation: log-probs, loss, gradient norm and the
           LoRA gradient are compared with the CPU's (tolerances in ``TOLERANCE``).
2. steps   SmolLM2-135M's and Qwen2.5-1.5B's architectures (random weights made on the device),
           GRPO and OSPO with the project's recipe (TrainConfig defaults): ``--warmup`` untimed
           steps, then ``--steps`` timed, phase by phase (GPU-synchronised) with peak memory.
3. goals   OSPO step / GRPO step for the ~1.5B architecture (goal ≤ 1.3), 200 SmolLM2 recipe
           steps extrapolated from the timed OSPO step (goal ≤ 300 s), parity within tolerance.

Random weights (bench/gpu_step.py's approach, with its gpu_models.py and gpu_run.py): speed and
memory are real; the policy's logits get gpu_step's rewrite bias so completions parse as
additions, and the embedder is an all-MiniLM-L6-v2-architecture model with random weights
(saved to a temporary folder and loaded by the project's ``Embedder``) over a synthetic
catalogue of random unit vectors; each query's targets are the products nearest its own
embedding. Reward values are meaningless.

This check supersedes gpu_step.py's training-step section as the GPU check to run (it goes
through the product's device path, which gpu_step predates); gpu_step.py still holds the 7B
step and the retrieval-at-scale measurements, and its results stay as recorded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import gpu_models as gm  # noqa: E402  (tokenizers, architectures, rewrite bias)
import gpu_run as gs  # noqa: E402  (clock, budget, writer, GPU phase timer)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from service.retrieval.embedder import Embedder  # noqa: E402
from service.retrieval.exact import ExactSearch  # noqa: E402
from service.retrieval.metrics import ndcg_at_k  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.config_options import add_config_arguments, config_from_args  # noqa: E402
from trainer.training.device import Placement  # noqa: E402
from trainer.training.phases import PHASES  # noqa: E402
from trainer.training.policy import attach_lora, lora_parameters, make_optimizer  # noqa: E402
from trainer.training.rollout import completion_logprobs  # noqa: E402
from trainer.training.step import policy_update, train_step  # noqa: E402

ARCHS = ("smollm2-135m", "qwen2.5-1.5b")
# --tiny: same code paths, CPU-sized shapes and a short recipe.
TINY_SMOLLM2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
TINY_CONFIG = {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8}
# parity: worst accepted differences between the device's update and the CPU's (float32 CPU =
# reference). bfloat16 keeps 8 bits of mantissa: the LoRA initialisation passes through it
# (peft casts the adapter to the base's dtype, then back to float32), log-probs move by ~1e-2,
# and so does the PPO ratio against the CPU's old log-probs, hence the loss.
TOLERANCE = {
    "float32": {"lora_init_rel": 0.0, "logp_max_abs": 1e-3, "loss_abs": 1e-5, "grad_rel": 1e-3},
    "bfloat16": {"lora_init_rel": 2**-8, "logp_max_abs": 0.25, "loss_abs": 1e-2, "grad_rel": 0.1},
}
GOAL_OSPO_OVER_GRPO, GOAL_200_STEPS_S, RECIPE_STEPS = 1.3, 300.0, 200


# ---------------------------------------------------------------------------------------------
# Policy and reward on the device
# ---------------------------------------------------------------------------------------------


def arch_config(name: str, tok: Any, tiny: bool) -> Any:
    """SmolLM2-135M's config (carried) or Qwen2.5-1.5B's shapes, with ``tok``'s vocabulary."""
    if name == "qwen2.5-1.5b":
        return gm.qwen25_config("1.5b", tok, tiny)
    raw = json.loads((gm.ASSETS / "smollm2" / "config.json").read_text())
    keep = {k: v for k, v in raw.items() if not k.startswith("_") and k not in ("dtype",)}
    keep.pop("transformers_version", None)
    return LlamaConfig(**{**keep, **(TINY_SMOLLM2 if tiny else {})})


def random_base(cfg: Any, tok: Any, dtype: torch.dtype, device: torch.device | str) -> Any:
    """A causal LM of ``cfg`` with random weights, made on ``device``, biased to write rewrites."""
    with gm.default_dtype(dtype), torch.device(device):
        base = AutoModelForCausalLM.from_config(cfg)
    bias = gm.rewrite_bias(tok, ARGS.rewrite_bias)
    if bias is not None:  # cast per call: the parity model is copied between devices and dtypes
        base.lm_head.register_forward_hook(lambda _m, _i, logits: logits + bias.to(logits))
    return base.eval()


class Reward:
    """NDCG@k of (text, query index) pairs: the project's ``Embedder`` and ``ExactSearch`` on the
    device over random unit vectors; each distinct text of a call is embedded once."""

    def __init__(self, embedder: Embedder, catalog: np.ndarray, queries: Sequence[str]) -> None:
        self.embedder, self.k = embedder, ARGS.config.reward_k
        self.search = ExactSearch(catalog, embedder.device)
        self.stats: Counter[str] = Counter()  # read by gpu_run.Phases
        rng = np.random.default_rng(ARGS.config.seed)
        near = self.search.search(embedder.encode(list(queries)), 20)[1]
        self.targets = [{str(r): float(rng.integers(1, 4)) for r in rows} for rows in near]

    def __call__(self, pairs: Sequence[tuple[str, int]]) -> np.ndarray:
        texts = [t for t in dict.fromkeys(t for t, _ in pairs) if t.strip()]
        rows = self.search.search(self.embedder.encode(texts), self.k)[1] if texts else []
        ranked = {t: [str(r) for r in row] for t, row in zip(texts, rows, strict=True)}
        self.stats["texts_embedded"] += len(texts)
        self.stats["pairs_valued"] += len(pairs)
        return np.array([ndcg_at_k(ranked.get(t, []), self.targets[q], self.k) for t, q in pairs])


def random_embedder(folder: Path, device: torch.device) -> Embedder:
    """The project's Embedder on ``device`` over a MiniLM-architecture model, random weights."""
    gm.build_encoder(ARGS.tiny, torch.device("cpu"), torch.float32).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(gm.ASSETS / "minilm" / name, folder / name)
    return Embedder(str(folder), batch_size=1024, device=str(device))


def text_reward(pairs: Sequence[tuple[str, Any]]) -> np.ndarray:
    """Parity's reward: a fixed function of the text, so both sides see the same advantages."""
    return np.array([sum(map(ord, text)) % 97 / 96 for text, _ in pairs])


# ---------------------------------------------------------------------------------------------
# 1. parity
# ---------------------------------------------------------------------------------------------


def _on(batch: Any, device: torch.device) -> Any:
    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    moved = {k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)}
    return dataclasses.replace(batch, **moved)


@torch.no_grad()
def _logprobs(model: Any, batch: Any, config: TrainConfig) -> torch.Tensor:
    """(B, T) float32 completion log-probs of the batch's rows under ``model``."""
    return completion_logprobs(
        model, batch.sequences, batch.attention_mask, batch.prompt_length, config.temperature
    ).float()


def _grads(model: Any) -> torch.Tensor:
    return torch.cat(
        [p.grad.detach().double().flatten().cpu() for p in lora_parameters(model).values()]
    )


def parity(tok: Any, placement: Placement) -> dict[str, Any]:
    """One CPU float32 step; its batch and advantages through the device's update (module doc)."""
    config = dataclasses.replace(ARGS.config, algo="ospo")
    torch.manual_seed(config.seed)
    base = random_base(arch_config("smollm2-135m", tok, ARGS.tiny), tok, torch.float32, "cpu")
    cpu_cfg = dataclasses.replace(config, device="cpu", dtype="float32")
    cpu_model = attach_lora(copy.deepcopy(base), cpu_cfg)
    init = {n: p.detach().clone() for n, p in lora_parameters(cpu_model).items()}
    queries = [(q, i) for i, q in enumerate(gm.QUERIES[: config.prompts_per_step])]
    out = train_step(
        cpu_model, tok, make_optimizer(cpu_model, cpu_cfg), queries, text_reward, cpu_cfg,
        np.random.default_rng(config.seed), seed=config.seed,
    )  # fmt: skip
    cpu_grad = _grads(cpu_model)
    reference = attach_lora(copy.deepcopy(base), cpu_cfg)  # the same LoRA init, not updated
    cpu_logp = _logprobs(reference, out.batch, cpu_cfg)
    del reference
    rec: dict[str, Any] = {"rows": len(out.batch.rollouts), "cpu": dict(out.stats)}
    for dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(config, device=placement.device.type, dtype=dtype)
        model = attach_lora(copy.deepcopy(base).to(getattr(torch, dtype)), cfg)
        init_rel = max(
            float((p.detach().cpu() - init[n]).abs().max() / init[n].abs().max().clamp(min=1e-30))
            for n, p in lora_parameters(model).items()
            if init[n].any()  # lora_B starts at zero on both sides
        )
        batch = _on(out.batch, placement.device)
        logp_diff = (_logprobs(model, batch, cfg).cpu() - cpu_logp)[out.batch.completion_mask].abs()
        stats = policy_update(
            model, make_optimizer(model, cfg), batch, out.advantages.to(placement.device), None,
            cfg,
        )  # fmt: skip
        grad = _grads(model)
        got = {
            "lora_init_rel": init_rel,
            "logp_max_abs": float(logp_diff.max()),
            "logp_mean_abs": float(logp_diff.mean()),
            "loss_abs": abs(stats["loss"] - out.stats["loss"]),
            "grad_norm": stats["grad_norm"],
            "grad_rel": float((grad - cpu_grad).norm() / cpu_grad.norm().clamp(min=1e-30)),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(grad, cpu_grad, dim=0)),
        }
        tol = TOLERANCE[dtype]
        got["ok"] = all(got[k] <= v for k, v in tol.items())
        rec[dtype] = got
        del model
        gs.free_memory(placement.device)
    rec["ok"] = rec["float32"]["ok"] and rec["bfloat16"]["ok"]
    return rec


# ---------------------------------------------------------------------------------------------
# 2. steps
# ---------------------------------------------------------------------------------------------


def timed_steps(name: str, tok: Any, reward: Reward, placement: Placement) -> dict[str, Any]:
    """Warm-up and timed ``train_step``s of GRPO then OSPO on one random-weight policy."""
    device = placement.device
    gs.free_memory(device)
    gs.reset_peak(device)
    t0 = time.perf_counter()
    base = random_base(arch_config(name, tok, ARGS.tiny), tok, placement.dtype, device)
    model = attach_lora(base, ARGS.config)  # the product's path: LoRA, then the config's device
    gs.sync(device)
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "build_s": gs.r(time.perf_counter() - t0, 2),
        "weights_gib": gs.peak_gib(device),
    }
    for algo in ("grpo", "ospo"):
        if gs.over_budget():
            out[algo] = {"status": "skipped", "reason": "time budget spent"}
            continue
        config = dataclasses.replace(ARGS.config, algo=algo)
        optimizer = make_optimizer(model, config)
        gs.reset_peak(device)
        steps = []
        for s in range(ARGS.warmup + config.steps):
            phases = gs.Phases(device, reward)
            first = s * config.prompts_per_step
            picked = [(first + i) % len(gm.QUERIES) for i in range(config.prompts_per_step)]
            queries = [(gm.QUERIES[q], q) for q in picked]  # key: the query's row of targets
            res = train_step(
                model, tok, optimizer, queries, reward, config, np.random.default_rng(s),
                seed=config.seed + s, phase=phases,
            )  # fmt: skip
            if s >= ARGS.warmup:
                rollouts = res.batch.rollouts
                steps.append(
                    {
                        "phase_s": phases.seconds,
                        "tokens": res.batch.n_tokens,
                        "parse_rate": float(np.mean([r.rewrite is not None for r in rollouts])),
                        "active_rows": res.stats["active_rows"],
                        "coalition_evals": res.stats["coalition_evals"],
                    }
                )
            if gs.over_budget():
                break
        if not steps:
            out[algo] = {"status": "skipped", "reason": "time budget spent in warm-up"}
            continue
        step_s = [sum(s["phase_s"].values()) for s in steps]
        out[algo] = {
            "status": "ok",
            "steps_timed": len(steps),
            "step_s": gs.r(float(np.mean(step_s))),
            "step_s_each": [gs.r(x) for x in step_s],
            "phase_s": {k: mean(steps, "phase_s", k) for k in PHASES},
            "peak_memory_gib": gs.peak_gib(device),
            **{
                k: mean(steps, k)
                for k in ("tokens", "parse_rate", "active_rows", "coalition_evals")
            },
        }
        print(f"[{gs.elapsed():6.1f}s] {name}/{algo}: step {out[algo]['step_s']} s", flush=True)
        del optimizer
        model.zero_grad(set_to_none=True)
    del model, base
    gs.free_memory(device)
    return out


def mean(steps: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    values = [s[key] if sub is None else s[key].get(sub, 0.0) for s in steps]
    return gs.r(float(np.mean(values)))


def goals(state: dict[str, Any]) -> dict[str, Any]:
    def step_s(name: str, algo: str) -> float | None:
        rec = state["steps"].get(name, {}).get(algo, {})
        return rec.get("step_s") if rec.get("status") == "ok" else None

    grpo, ospo = step_s("qwen2.5-1.5b", "grpo"), step_s("qwen2.5-1.5b", "ospo")
    small = step_s("smollm2-135m", "ospo")
    ratio = ospo / grpo if grpo and ospo else None
    recipe = small * RECIPE_STEPS if small else None
    return {
        "ospo_over_grpo_1.5b": gs.r(ratio, 3),
        "ospo_over_grpo_1.5b_ok": None if ratio is None else ratio <= GOAL_OSPO_OVER_GRPO,
        "smollm2_200_steps_s": gs.r(recipe, 1),  # extrapolated: 200 × the timed OSPO step
        "smollm2_200_steps_ok": None if recipe is None else recipe <= GOAL_200_STEPS_S,
        "parity_ok": state["parity"].get("ok"),
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny shapes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new parts")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {ARCHS}")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (1; tiny 0)")
    p.add_argument("--catalog-size", type=int, default=None, help="products (100000; tiny 500)")
    p.add_argument("--rewrite-bias", type=float, default=10.0, help="see bench/gpu_step.py")
    add_config_arguments(p, TrainConfig, {"steps": 2}, exclude=("algo",))
    a = p.parse_args(argv)
    defaults = {"steps": 1, **TINY_CONFIG} if a.tiny else {"steps": 2}
    try:
        a.config = config_from_args(TrainConfig, a, defaults)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    a.archs = [x for x in a.archs.split(",") if x]
    if any(x not in ARCHS for x in a.archs):
        p.error(f"--archs: of {ARCHS}")
    a.warmup = (0 if a.tiny else 1) if a.warmup is None else a.warmup
    a.catalog_size = a.catalog_size or (500 if a.tiny else 100_000)
    a.out = a.out or ROOT / "bench" / "results" / (
        "tmp/gpu_check_tiny.json" if a.tiny else "gpu_check.json"
    )
    return a


def main(argv: Sequence[str] | None = None) -> int:
    global ARGS
    ARGS = gs.ARGS = parse_args(argv)  # gpu_run's clock, budget and writer read --out, --budget-s
    placement = ARGS.config.placement()
    device = placement.device
    state: dict[str, Any] = {
        "benchmark": "bench/gpu_check.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tiny": ARGS.tiny,
        "card": torch.cuda.get_device_name(device) if placement.on_gpu else "cpu",
        "placement": {"device": str(device), "dtype": str(placement.dtype)},
        "versions": gs.versions(),
        "gpu_memory_gib": (
            gs.r(torch.cuda.get_device_properties(device).total_memory / gs.GIB, 1)
            if placement.on_gpu
            else None
        ),
        "config": {
            "train_config": dataclasses.asdict(ARGS.config),
            "archs": ARGS.archs,
            "warmup": ARGS.warmup,
            "catalog_size": ARGS.catalog_size,
            "budget_s": ARGS.budget_s,
            "tolerance": TOLERANCE,
        },  # fmt: skip
        "parity": {},
        "steps": {},
    }
    print(
        f"gpu_check on {state['card']} ({placement.dtype}), torch {torch.__version__}", flush=True
    )
    gs.write(state)
    tok = gm.policy_tokenizer()
    try:
        state["parity"] = parity(tok, placement)
    except Exception as exc:  # record and go on: the step timings are still worth having
        state["parity"] = {**gs.error_record(exc), "ok": False}
    print(f"[{gs.elapsed():6.1f}s] parity ok: {state['parity'].get('ok')}", flush=True)
    gs.write(state)
    with tempfile.TemporaryDirectory() as folder:
        embedder = random_embedder(Path(folder), device)
        rng = np.random.default_rng(ARGS.config.seed)
        catalog = rng.standard_normal((ARGS.catalog_size, embedder.dim), dtype=np.float32)
        catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
        reward = Reward(embedder, catalog, gm.QUERIES)
        for name in ARGS.archs:
            if gs.over_budget():
                state["steps"][name] = {"status": "skipped", "reason": "time budget spent"}
                continue
            try:
                state["steps"][name] = timed_steps(name, tok, reward, placement)
            except Exception as exc:  # OOM or a version incompatibility: record and go on
                state["steps"][name] = gs.error_record(exc)
                gs.free_memory(device)
            gs.write(state)
    state["goals"] = goals(state)
    state["finished"] = True
    gs.write(state)
    print(json.dumps({"parity": state["parity"], "goals": state["goals"]}, indent=1, default=str))
    print(f"wrote {ARGS.out} in {gs.elapsed():.1f}s", flush=True)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
