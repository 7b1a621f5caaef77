"""Query rewriting seen from search: a policy answer, a cached one, or the raw query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Source = Literal["policy", "cache", "fallback", "none"]


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
