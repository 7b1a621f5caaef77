"""Bodies of the merchandising-rule endpoints (/admin/rules)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.domain import RuleKind
from service.schemas.public import ProductIdText, QueryText
from service.schemas.text import text

TermText = text(128, required=True, strip=True)


class RuleIn(BaseModel):
    """A synonym group (`terms`), or a pin/hide of `product_ids` for one `query`."""

    model_config = ConfigDict(extra="forbid")

    kind: RuleKind
    query: QueryText | None = Field(
        None, description="pin/hide: the query it applies to (matched after normalisation)."
    )
    terms: Annotated[list[TermText], Field(max_length=50)] = Field(
        default_factory=list,
        description="synonym: 2+ interchangeable words or phrases; a query containing one has "
        "the others added to its lexical search.",
    )
    product_ids: Annotated[list[ProductIdText], Field(max_length=100)] = Field(
        default_factory=list,
        description="pin: shown first, in this order; hide: never shown for the query.",
    )
    enabled: bool = True
    note: Annotated[str, Field(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> RuleIn:
        if self.kind == RuleKind.synonym:
            if self.query is not None or self.product_ids:
                raise ValueError("a synonym rule takes `terms` only (no query, no product_ids)")
            if len({t.lower() for t in self.terms}) < 2:
                raise ValueError("a synonym rule needs at least two different `terms`")
        else:
            if self.query is None or not self.product_ids or self.terms:
                raise ValueError(f"a {self.kind} rule takes a `query` and `product_ids` (no terms)")
            if len(set(self.product_ids)) != len(self.product_ids):
                raise ValueError("`product_ids` repeats a product")
        return self


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
