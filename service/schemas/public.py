"""Request and response bodies of the public API (search and events) and the error body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from service.domain import EventType, RetrievalMode, RewriteSource
from service.schemas.text import text

QueryText = text(512, required=True, strip=True)
ClientText = text(128)
EventIdText = text(128, required=True, strip=True)
SearchIdText = text(36, required=True)
ProductIdText = text(64, required=True)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: QueryText
    k: int = Field(10, ge=1, le=100)
    user_id: ClientText | None = None
    session_id: ClientText | None = None
    mode: RetrievalMode | None = Field(
        None,
        description="Retrieval arms: dense, lexical or hybrid (fused); default: the "
        "deployment's OSPO_RETRIEVAL_MODE.",
    )


class SearchResult(BaseModel):
    product_id: str
    title: str
    score: float


class SearchResponse(BaseModel):
    search_id: str
    query: str
    rewrite: str = Field(description="The text retrieval searched with.")
    expansion: str | None = Field(
        None,
        description="The policy's additions to the query (expand mode; empty when it added "
        "nothing), or its replacement query (replace mode); null when no policy answered.",
    )
    rewrite_source: RewriteSource
    adapter: str | None
    prompt_version: str | None = None
    index_version: str
    retrieval_mode: RetrievalMode
    results: list[SearchResult]
    timings: dict[str, float] = Field(
        description="Milliseconds: rewrite, retrieve (with dense, lexical and fusion for the "
        "arms that ran, measured over the micro-batch the search joined), log, total."
    )


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: EventIdText
    search_id: SearchIdText
    product_id: ProductIdText
    type: EventType
    ts: datetime | None = None


MAX_EVENTS_PER_BATCH = 1000
EventBatch = Annotated[
    list[EventIn],
    Field(
        min_length=1,
        max_length=MAX_EVENTS_PER_BATCH,
        description="1 to 1000 events; every search_id must name a logged search, or the "
        "whole batch is refused (404) and nothing of it stored.",
    ),
]


class EventsResponse(BaseModel):
    received: int
    stored: int
    duplicates: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
