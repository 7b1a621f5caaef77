"""Query rewriting seen from search: a policy answer, a cached one, or the raw query."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

Source = Literal["policy", "cache", "fallback", "none"]


class MissPolicy(StrEnum):
    """Who rewrites a query that has no stored rewrite (search serves it raw meanwhile)."""

    background = "background"  # the API process asks the policy at once
    deferred = "deferred"  # the serving worker's next refresh (service.rewriting.warmup)


@dataclass(frozen=True)
class Rewrite:
    text: str  # what retrieval searches with
    source: Source
    adapter: str | None = None
    prompt_version: str | None = None
    answer: str | None = None  # the policy's own answer (expand mode: the added terms)


class Rewriter(Protocol):
    async def rewrite(self, query: str, normalized: str) -> Rewrite: ...


class IdentityRewriter:
    """No policy configured: search with the shopper's own words."""

    async def rewrite(self, query: str, normalized: str) -> Rewrite:
        return Rewrite(text=query, source="none")
