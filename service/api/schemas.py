"""Request and response bodies of the public API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EventType = Literal["impression", "click", "add_to_cart", "purchase"]
RewriteSource = Literal["policy", "cache", "fallback", "none"]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
    k: int = Field(10, ge=1, le=100)
    user_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    session_id: Annotated[str, StringConstraints(max_length=128)] | None = None


class SearchResult(BaseModel):
    product_id: str
    title: str
    score: float


class SearchResponse(BaseModel):
    search_id: str
    query: str
    rewrite: str
    rewrite_source: RewriteSource
    adapter: str | None
    prompt_version: str | None = None
    index_version: str
    results: list[SearchResult]
    timings: dict[str, float]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
    search_id: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    product_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    type: EventType
    ts: datetime | None = None


class EventsResponse(BaseModel):
    received: int
    stored: int
    duplicates: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
