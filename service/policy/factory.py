"""Choosing the policy backend from settings: vLLM server, in-process model, or none."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from service.domain import BASE_ADAPTER
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from service.policy.protocol import AdapterError, Policy, RewriteResult

if TYPE_CHECKING:
    from service.settings import Settings


class NullPolicy:
    """`policy_backend=none`: every rewrite is the raw query, flagged as a fallback."""

    def __init__(self, prompt: PromptConfig = DEFAULT_PROMPT) -> None:
        self.prompt = prompt

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        started = time.perf_counter()
        return RewriteResult(
            text=query,
            raw_completion="",
            adapter=None,
            prompt_version=self.prompt.version,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            ok=False,
        )

    async def health(self) -> bool:
        return True

    async def list_models(self) -> list[str]:
        return [BASE_ADAPTER]

    async def load_adapter(self, name: str, path: Path | str, load_inplace: bool = False) -> None:
        raise AdapterError("policy_backend=none cannot load adapters")

    async def unload_adapter(self, name: str) -> None:
        raise AdapterError("policy_backend=none has no adapters")

    async def aclose(self) -> None:
        return None


def make_policy(settings: Settings, prompt: PromptConfig = DEFAULT_PROMPT) -> Policy:
    """The policy `settings.policy_backend` asks for, configured from settings.

    `local` prepares the default SmolLM2 folder when no `policy_model` is configured (a
    one-off conversion of ~30 s); `vllm` only builds a client, the server runs separately.
    """
    if settings.policy_backend == "vllm":
        from service.policy.client import VllmPolicyClient

        return VllmPolicyClient(
            settings.vllm_url,
            prompt=prompt,
            max_concurrency=settings.policy_max_concurrency,
            timeout_s=settings.policy_timeout_s,
            max_tokens=prompt.max_tokens,
        )
    if settings.policy_backend == "local":
        from service.policy.local import LocalPolicy
        from service.policy.models import resolve_policy_model

        model_path = resolve_policy_model(settings)
        return LocalPolicy(model_path, prompt=prompt, max_tokens=prompt.max_tokens)
    return NullPolicy(prompt)
