"""Rollouts sampled by a vLLM server from the LoRA being trained (TRL's vLLM "server" mode).

``VllmRollouts`` is a drop-in for ``trainer.training.rollout.sample_rollouts`` (same call, same
``RolloutBatch``). Each call:

1. push    when the LoRA weights changed since the last push, save the adapter (peft
           ``save_pretrained``: adapter weights only, ~10 MB at r=8) into a fresh folder and
           load it into the server under the run's name with ``load_inplace``. vLLM keys its
           caches by folder, so every version gets a new one; the previous one is then deleted;
2. sample  one ``/v1/completions`` request per query with n = G, sent concurrently so the
           engine batches all P·G sequences; the prompt travels as the token ids the trainer
           tokenised (``prompt_token_ids``), so both sides see the same prompt tokens, and the
           shared system prompt and examples are computed once (vLLM's prefix cache);
3. build   the ``RolloutBatch`` from the returned token ids with ``rollout.rollout_batch``,
           exactly as the in-process sampler does.

Old log-probs are not taken from the server (its log-probs are of the raw logits, not of
softmax(logits / τ), and a float32 CPU server and the trainer differ in the last bits): with
one update per batch the update uses the policy's own detached log-probs, as TRL does, and
computes them with one no-grad forward otherwise (trainer/training/step.py ``train_step``).

Weight changes are detected from the LoRA tensors' in-place version counters (``_version``,
bumped by every optimiser step), so sampling twice between two updates pushes once.
``served_sampler`` opens the server a run samples from: the one at ``vllm_url`` when it serves
the same base model, else a private server started for the run (docs/training-speed.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from service.policy.client import SampledTokens, VllmPolicyClient
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from service.policy.protocol import PolicyError
from service.policy.retry import until_reachable
from trainer.training.phases import Phase, untimed
from trainer.training.rollout import RolloutBatch, prompt_token_ids, rollout_batch

if TYPE_CHECKING:
    from trainer.training.config import TrainConfig

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000  # per-query seeds of one call: seed·stride + i·G (+ j, vLLM's per-child)
UNLOAD_LIMIT_S = 60.0  # how long the unload at the end of a run waits for an unreachable server


class ServedRolloutError(RuntimeError):
    """The vLLM server cannot sample for this run (down, another base model, adapter refused)."""


class VllmRollouts:
    """Samples rollouts from the training LoRA through a vLLM server (module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        adapter_name: str | None = None,
        work_dir: Path | None = None,
        timeout_s: float = 300.0,
        max_concurrency: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.adapter_name = adapter_name or f"ospo-train-{uuid.uuid4().hex[:8]}"
        self._own_dir = work_dir is None  # then a temporary folder, made at the first push
        self.work_dir = work_dir
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.pushes = 0
        self.push_s = 0.0  # seconds spent saving and loading adapters, all calls together
        self._pushed: tuple[int, ...] | None = None
        self._folder: Path | None = None

    def _client(self) -> VllmPolicyClient:
        return VllmPolicyClient(
            self.base_url, timeout_s=self.timeout_s, max_concurrency=self.max_concurrency
        )

    def check(self, model_path: Path) -> None:
        """Raise ``ServedRolloutError`` unless the server answers and serves ``model_path``."""

        async def roots() -> dict[str, str] | None:
            async with self._client() as client:
                return await client.model_roots() if await client.health() else None

        served = asyncio.run(roots())
        if served is None:
            raise ServedRolloutError(f"no vLLM server answers at {self.base_url}")
        base = served.get("base", "")
        if not base or Path(base).resolve() != Path(model_path).resolve():
            raise ServedRolloutError(
                f"the vLLM server at {self.base_url} serves {base or served!r}, "
                f"not the training base model {model_path}"
            )

    def push(self, model: Any) -> bool:
        """Load the model's current LoRA weights into the server (no-op when unchanged)."""
        version = tuple(p._version for p in model.parameters() if p.requires_grad)
        if version == self._pushed:
            return False
        started = time.perf_counter()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="ospo-rollout-lora-"))
        folder = self.work_dir / f"v{self.pushes:05d}"
        model.save_pretrained(folder)

        async def load() -> None:
            async with self._client() as client:
                await client.load_adapter(
                    self.adapter_name, folder, load_inplace=self._folder is not None
                )

        asyncio.run(load())
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder, self._pushed = folder, version
        self.pushes += 1
        self.push_s += time.perf_counter() - started
        return True

    @torch.no_grad()
    def __call__(
        self,
        model: Any,
        tokenizer: Any,
        queries: Sequence[str],
        *,
        group_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        prompt: PromptConfig = DEFAULT_PROMPT,
        seed: int | None = None,
        max_chars: int = 256,
        phase: Phase = untimed,
    ) -> RolloutBatch:
        """``group_size`` completions per query from the model's current LoRA weights."""
        if temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling")
        prompts = prompt_token_ids(tokenizer, queries, prompt)
        with phase("generate"):  # the push is part of getting samples from this policy
            self.push(model)
            sampled = asyncio.run(
                self._sample(prompts, group_size, max_new_tokens, temperature, prompt, seed)
            )
        with phase("decode"):
            rows = [ids for ids in prompts for _ in range(group_size)]
            generated = [c.token_ids for per_query in sampled for c in per_query]
            return rollout_batch(
                tokenizer, queries, group_size, rows, generated, prompt, max_chars, model.device
            )

    async def _sample(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        prompt: PromptConfig,
        seed: int | None,
    ) -> list[list[SampledTokens]]:
        stop = [s for s in prompt.stop if s]
        async with self._client() as client:
            results = await asyncio.gather(
                *(
                    client.sample_token_ids(
                        ids, self.adapter_name, n=n, temperature=temperature,
                        max_tokens=max_tokens, stop=stop,
                        seed=None if seed is None else (seed * SEED_STRIDE + i * n) % 2**31,
                    )
                    for i, ids in enumerate(prompts)
                )
            )  # fmt: skip
        for got in results:
            if len(got) != n:
                raise ServedRolloutError(f"asked for {n} completions, got {len(got)}")
        return list(results)

    def close(self) -> None:
        """Unload the run's adapter from the server and delete its folders (never raises)."""
        if self._folder is not None:

            async def unload() -> None:
                # a server busy restarting (a proxy's 503, a reset) is waited for, like promotion
                async with self._client() as client:
                    async for attempt in until_reachable(UNLOAD_LIMIT_S):
                        with attempt:
                            await client.unload_adapter(self.adapter_name)

            try:
                asyncio.run(unload())
            except Exception as exc:  # noqa: BLE001 - cleanup; the server may be gone
                log.warning("could not unload %s: %s", self.adapter_name, exc)
            self._folder, self._pushed = None, None
        if self._own_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None


def rollout_server_url(config: TrainConfig) -> str:
    """The server ``rollouts="vllm"`` samples from unless it starts a private one."""
    from service.settings import get_settings

    return config.vllm_url or get_settings().vllm_url


def serves_model(url: str, model_path: Path) -> bool:
    """Whether a vLLM server answers at ``url`` and serves ``model_path`` (never raises)."""
    try:
        VllmRollouts(url).check(model_path)
    except (ServedRolloutError, PolicyError):
        return False
    return True


@contextlib.contextmanager
def served_sampler(config: TrainConfig, model_path: Path) -> Iterator[VllmRollouts | None]:
    """The sampler a run uses: None for ``rollouts="generate"``; else ``VllmRollouts`` on the
    server at ``config.vllm_url`` (default: settings ``vllm_url``) when it serves
    ``model_path``, or on a private server started for the run and stopped after it."""
    if config.rollouts == "generate":
        yield None
        return
    from service.settings import get_settings

    settings = get_settings()
    sampler = VllmRollouts(rollout_server_url(config))
    server = None
    try:
        try:
            sampler.check(model_path)
        except ServedRolloutError as exc:
            if config.vllm_url:  # named explicitly: never replaced silently
                raise
            server = _private_server(settings, model_path, config, reason=str(exc))
            sampler = VllmRollouts(server.url)
            sampler.check(model_path)
        yield sampler
    finally:
        sampler.close()
        if server is not None:
            server.stop()


def _private_server(settings: Any, model_path: Path, config: TrainConfig, reason: str) -> Any:
    """A vLLM server on a free port for this run only (its start takes ~30-60 s here)."""
    import importlib.util

    from service.policy.server import VllmServer, engine_on_every_core, free_port

    if importlib.util.find_spec("vllm") is None:
        raise ServedRolloutError(f"{reason}, and vllm is not installed: use --rollouts generate")
    log.warning("%s: starting a private vLLM server for the rollouts", reason)
    server = VllmServer.from_settings(
        settings,
        model_path,
        port=free_port(),
        max_loras=1,
        max_lora_rank=max(settings.vllm_max_lora_rank, config.lora_r),
        log_path=settings.data_dir / "logs" / f"vllm-rollouts-{os.getpid()}.log",
        env=engine_on_every_core(),  # the run waits while it samples: no core to keep free
    )
    return server.start(wait=True, timeout=settings.vllm_start_timeout_s)
