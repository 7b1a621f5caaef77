"""Request and response bodies of the public API (search and events) and the error body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.domain import EventType, RetrievalMode, RewriteSource, RuleKind
from service.schemas.text import text

QueryText = text(512, required=True, strip=True)
ClientText = text(128)
EventIdText = text(128, required=True, strip=True)
SearchIdText = text(36, required=True)
ProductIdText = text(64, required=True)
FieldName = text(64, required=True, strip=True)
FilterValue = text(256, required=True, strip=True)
FilterValues = Annotated[list[FilterValue], Field(min_length=1, max_length=100)]


class PriceRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict: JSON true/false is not a price. A min above the max admits nothing.
    min: float | None = Field(
        None, ge=0, strict=True, description="Lowest price admitted (inclusive)."
    )
    max: float | None = Field(
        None, ge=0, strict=True, description="Highest price admitted (inclusive)."
    )


class SearchFilters(BaseModel):
    """Restrict the results. Values within a field are OR-ed, fields are AND-ed; values match
    case-insensitively and exactly (use the values the answer's `facets` list). Products without
    a price fail any price bound. Filtering happens inside retrieval, so a filtered search
    returns k results whenever k products match."""

    model_config = ConfigDict(extra="forbid")

    brand: FilterValues | None = None
    price: PriceRange | None = None
    attributes: dict[FieldName, FilterValues] | None = Field(
        None,
        max_length=20,
        description='Catalogue attribute → admitted values, e.g. {"product_colour": '
        '["Black"]}. An attribute the catalogue does not have admits nothing (no product '
        "carries it) and the answer's `warnings` names the known ones.",
    )


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
    filters: SearchFilters | None = None
    facets: list[FieldName] | None = Field(
        None,
        max_length=20,
        description="Fields to count over the candidate set: brand, price and attribute names "
        "(an unknown one is counted empty and named in `warnings`). Default: brand, price and "
        "the catalogue's five most common word-valued attributes; [] for none.",
    )


class SearchResult(BaseModel):
    product_id: str
    title: str
    score: float
    brand: str | None = None
    price: float | None = None
    pinned: bool = Field(False, description="Placed here by a pin rule, not by ranking.")


class FacetCount(BaseModel):
    value: str
    count: int


class NumericStats(BaseModel):
    min: float
    max: float
    count: int = Field(description="Candidates that have a value.")


class FiredRule(BaseModel):
    id: int
    kind: RuleKind


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
    facets: dict[str, list[FacetCount]] = Field(
        default_factory=dict,
        description="Per requested field, its most frequent values among the candidates the "
        "results were ranked from (each arm's top 100 after filters, fused), most first.",
    )
    facet_stats: dict[str, NumericStats] = Field(
        default_factory=dict, description="Range of each numeric field (price) among them."
    )
    rules: list[FiredRule] = Field(
        default_factory=list, description="Merchandising rules that applied to this search."
    )
    warnings: list[str] = Field(
        default_factory=list, description="Things the request asked that this index lacks."
    )
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
# An item that is not a valid `EventIn` is refused alone (its result says why) instead of
# failing the batch: so the published item is any object, with `EventIn` as what is stored.
EventItem = Annotated[
    EventIn | dict[str, Any],
    Field(
        union_mode="left_to_right",
        description="An event (`EventIn`); an object that is not one is refused alone.",
    ),
]
EventBatch = Annotated[
    list[EventItem],
    Field(
        min_length=1,
        max_length=MAX_EVENTS_PER_BATCH,
        description="1 to 1000 events. Each is stored, found a duplicate or refused on its "
        "own (`results`); an event naming a search the log does not know is stored too, "
        "marked `search_known: false`, and left out of interaction labels until the search "
        "arrives.",
    ),
]

EventStatus = Literal["stored", "duplicate", "refused"]


class EventResult(BaseModel):
    index: int = Field(description="Position of the event in the batch (0-based).")
    event_id: str | None = Field(None, description="Its event_id, when it had a valid one.")
    status: EventStatus = Field(
        description="stored: new and stored; duplicate: this event_id was stored before (or "
        "earlier in the batch), nothing changed; refused: not stored, see `reason` (send it "
        "again only once corrected)."
    )
    search_known: bool | None = Field(
        None,
        description="Stored events: false when no logged search has its search_id (kept, "
        "but not learned from until that search is logged).",
    )
    reason: str | None = Field(None, description="Why a refused event was refused.")


class EventsResponse(BaseModel):
    received: int
    stored: int
    duplicates: int
    refused: int = Field(0, description="Events not stored; each result says why.")
    unknown_search: int = Field(
        0, description="Of the stored events, those naming a search the log does not know."
    )
    results: list[EventResult] = Field(
        default_factory=list, description="One per event of the batch, in its order."
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
