"""Bodies of the merchandising-rule endpoints (/admin/rules)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.domain import RuleKind
from service.schemas.public import ProductIdText, QueryText
from service.schemas.text import text

TermText = text(128, required=True, strip=True)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, strict=True)  # JSON 0/1 is not a boolean
    note: Annotated[str, Field(max_length=1000)] | None = None


def _unique(values: list[str], fold: bool = False) -> list[str]:
    """`values` without repeats (first kept); `fold` compares them case-insensitively."""
    firsts: dict[str, str] = {}
    for v in values:
        firsts.setdefault(v.casefold() if fold else v, v)
    return list(firsts.values())


class SynonymRuleIn(_Rule):
    """Interchangeable words or phrases: a query containing one has the others added to its
    lexical search."""

    kind: Literal[RuleKind.synonym]
    terms: Annotated[list[TermText], Field(min_length=2, max_length=50)]

    @field_validator("terms")
    @classmethod
    def _dedupe(cls, terms: list[str]) -> list[str]:
        return _unique(terms, fold=True)  # repeats say nothing more


class _QueryRule(_Rule):
    query: QueryText = Field(description="The query it applies to (matched normalised).")
    product_ids: Annotated[list[ProductIdText], Field(min_length=1, max_length=100)]

    @field_validator("product_ids")
    @classmethod
    def _dedupe(cls, ids: list[str]) -> list[str]:
        return _unique(ids)


class PinRuleIn(_QueryRule):
    """Products shown first, in this order, for one query."""

    kind: Literal[RuleKind.pin]


class HideRuleIn(_QueryRule):
    """Products never shown for one query."""

    kind: Literal[RuleKind.hide]


RuleIn = Annotated[SynonymRuleIn | PinRuleIn | HideRuleIn, Field(discriminator="kind")]


class RuleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: RuleKind
    query: str | None = Field(description="Normalised query (pin/hide).")
    terms: list[str]
    product_ids: list[str]
    enabled: bool
    note: str | None
    created_at: datetime
    updated_at: datetime
