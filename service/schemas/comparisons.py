"""Bodies of the interleaved-comparison endpoints (/admin/comparisons)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.domain import ComparisonStatus


class TallyOut(BaseModel):
    interleaved: int = Field(description="Searches shown interleaved.")
    searches: int = Field(description="Of those, searches with engagement (the sample).")
    wins: int = Field(description="Searches whose engagement credited the candidate more.")
    losses: int
    ties: int
    preference: float = Field(description="Mean outcome (+1 win, −1 loss, 0 tie).")
    low: float = Field(description="Lower end of the preference's interval.")
    high: float


class ComparisonOut(BaseModel):
    id: str
    run_id: str | None
    candidate: str
    baseline: str | None = Field(description="The adapter that served; null: the raw query.")
    status: ComparisonStatus
    share: float
    max_searches: int
    deadline: datetime
    created_at: datetime
    decided_at: datetime | None
    tally: TallyOut = Field(description="Recomputed from the search log and events now.")
    decision: dict = Field(description="What the decision recorded when it was made.")
