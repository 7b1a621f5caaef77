"""Query rewriting seen from search: a policy answer, a cached one, or the raw query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.domain import RewriteSource


@dataclass(frozen=True)
class Rewrite:
    text: str  # what retrieval searches with
    source: RewriteSource
    adapter: str | None = None
    prompt_version: str | None = None
    answer: str | None = None  # the policy's own answer (expand mode: the added terms)


class Rewriter(Protocol):
    """What search and the app's lifespan need of a rewriter."""

    async def rewrite(self, query: str, normalized: str) -> Rewrite: ...

    async def stored(self, query: str, normalized: str, adapter: str) -> Rewrite:
        """What `adapter` (not necessarily the active one) would serve from the rewrite store
        alone, the raw query on a miss: the candidate's side of an interleaved comparison,
        whose head queries were warmed before the comparison started."""

    async def start(self) -> None:
        """Start background work (health checks, adapter watching); called once at start-up."""

    async def stop(self) -> None:
        """Stop it; called once at shutdown."""

    def status(self) -> dict[str, Any] | None:
        """The policy's health for `/readyz`, or None when no policy is involved."""


class IdentityRewriter:
    """No policy configured: search with the shopper's own words."""

    async def rewrite(self, query: str, normalized: str) -> Rewrite:
        return Rewrite(text=query, source=RewriteSource.none)

    async def stored(self, query: str, normalized: str, adapter: str) -> Rewrite:
        return Rewrite(text=query, source=RewriteSource.none)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any] | None:
        return None
