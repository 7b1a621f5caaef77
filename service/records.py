"""Plain records produced by the catalog and label parsers, independent of the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SEARCH_TEXT = 512  # characters; MiniLM truncates at 256 word pieces anyway


@dataclass(frozen=True, slots=True)
class ProductRecord:
    id: str
    title: str
    source: str
    brand: str | None = None
    description: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def search_text(self) -> str:
        """The text the embedder sees: title, brand, then the start of the description."""
        parts = [self.title]
        if self.brand and self.brand.lower() not in self.title.lower():
            parts.append(self.brand)
        if self.description:
            parts.append(self.description)
        return ". ".join(p.strip() for p in parts if p and p.strip())[:MAX_SEARCH_TEXT]


@dataclass(frozen=True, slots=True)
class LabelRecord:
    query: str
    product_id: str
    gain: float
    source: str
