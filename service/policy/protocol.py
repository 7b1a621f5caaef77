"""What every policy backend returns and promises: `RewriteResult` and the `Policy` protocol.

Search code depends on this interface only, so the vLLM server, the in-process transformers
backend and the no-op policy are interchangeable (`make_policy` picks one from settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


class PolicyError(RuntimeError):
    """The policy could not produce a rewrite (server down, timeout, bad response)."""


class PolicyBusy(PolicyError):
    """The server accepted the request but did not answer in time (overloaded, not down)."""


class PolicyUnreachable(PolicyError):
    """No policy server answers (starting, restarting, down): worth waiting for, unlike a
    refusal. Promotion and warm-up retry it with backoff (`service.policy.retry`)."""


class AdapterError(PolicyError):
    """An adapter could not be loaded or unloaded."""


@dataclass(frozen=True)
class RewriteResult:
    """One rewrite of a shopper query.

    `text` is what search runs on: the query plus the policy's additions (expand mode), the
    policy's line (replace mode), or the raw query when the completion was unusable (`ok` is
    then False). `answer` is the parsed answer itself ("" when the policy said nothing is
    needed), a verbatim substring of `raw_completion`, which is kept for logging and training.
    """

    text: str
    raw_completion: str
    adapter: str | None
    prompt_version: str
    latency_ms: float
    ok: bool = True
    answer: str | None = None
    finish_reason: str | None = None
    completion_tokens: int | None = None


@runtime_checkable
class Policy(Protocol):
    """A query-rewriting policy: a base model plus optionally named LoRA adapters."""

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        """Greedy rewrite of `query` with `adapter` (None: the base model)."""
        ...

    async def health(self) -> bool: ...

    async def list_models(self) -> list[str]:
        """`base` plus the names of the loaded adapters."""
        ...

    async def load_adapter(
        self, name: str, path: Path | str, load_inplace: bool = False
    ) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchPolicy(Protocol):
    """A policy that also rewrites many queries in one request (bulk work: the warm-up)."""

    async def rewrite_many(
        self, queries: list[str], adapter: str | None = None
    ) -> list[RewriteResult]:
        """Greedy rewrites of `queries`, in their order."""
        ...
