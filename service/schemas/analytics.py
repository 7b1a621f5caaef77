"""Response body of `GET /admin/analytics`: search figures over a window, in total, per UTC day
and per adapter, and the top queries. Every rate is a ratio of the counts beside it, so a client
can re-aggregate (e.g. a week from seven days) exactly."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class Figures(BaseModel):
    searches: int = Field(description="Searches logged in the group.")
    clicked_searches: int = Field(description="Searches with at least one click event.")
    no_result_searches: int = Field(description="Searches that showed no product.")
    add_to_cart_searches: int = Field(description="Searches with at least one add_to_cart event.")
    purchase_searches: int = Field(description="Searches with at least one purchase event.")
    positioned_clicks: int = Field(
        description="Click events with a position (the product was among the search's shown "
        "results); the mean click position is over these."
    )
    click_through_rate: float | None = Field(
        description="clicked_searches / searches; null when there are no searches."
    )
    no_result_rate: float | None = Field(description="no_result_searches / searches.")
    mean_click_position: float | None = Field(
        description="Mean 1-based position of the positioned clicks; null when there are none."
    )
    add_to_cart_rate: float | None = Field(description="add_to_cart_searches / searches.")
    purchase_rate: float | None = Field(description="purchase_searches / searches.")


class DayFigures(Figures):
    day: date = Field(description="UTC calendar day of the searches (events follow their search).")


class AdapterFigures(Figures):
    adapter: str | None = Field(
        description="The adapter whose rewrite served the searches; null: no adapter (the raw "
        "query served, or the base model's rewrite where the deployment serves the base model). "
        "Select it with `adapter=-`."
    )


class QueryFigures(BaseModel):
    query: str = Field(description="One spelling shoppers typed (the smallest, for stability).")
    normalized_query: str = Field(description="The normalised query the counts group by.")
    searches: int = Field(
        description="Searches of this normalised query in the window (in the no-result list: "
        "its searches that showed no product)."
    )


class AnalyticsWindow(BaseModel):
    since: datetime = Field(description="Start of the window (inclusive), UTC.")
    until: datetime = Field(description="End of the window (exclusive), UTC.")
    days: int = Field(description="UTC calendar days the window touches (rows of `per_day`).")
    adapter: str | None = Field(
        description="The adapter filter as given (`-`: searches with no adapter); null: all."
    )


class AnalyticsOut(BaseModel):
    window: AnalyticsWindow
    exact: bool = Field(
        True,
        description="true: every figure is an exact SQL aggregate over every search of the "
        "window and its events (no sampling).",
    )
    totals: Figures
    per_day: list[DayFigures] = Field(
        description="One row per UTC day of the window, oldest first, days without searches "
        "included (with zero counts and null rates)."
    )
    per_adapter: list[AdapterFigures] = Field(
        description="One row per adapter that served searches in the window, most searches "
        "first (null adapter: see `adapter`)."
    )
    top_queries: list[QueryFigures] = Field(
        description="The most searched normalised queries, most first (ties: alphabetical)."
    )
    top_no_result_queries: list[QueryFigures] = Field(
        description="The normalised queries most often searched without any result, most first "
        "(ties: alphabetical); `searches` counts only their no-result searches."
    )
    query_ms: float = Field(description="Milliseconds the database took for the three statements.")
