"""Interleaved comparisons (bearer `OSPO_ADMIN_API_KEY`): each with its tally recomputed from
the search log, and a way to stop one."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Query

from service.api.deps import AdminDep, SettingsDep
from service.schemas.comparisons import ComparisonOut
from service.schemas.public import ErrorResponse
from service.services import comparisons

router = APIRouter(
    prefix="/admin",
    tags=["comparisons"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorResponse}},
)


@router.get("/comparisons", response_model=list[ComparisonOut])
async def list_comparisons(
    settings: SettingsDep, limit: int = Query(50, ge=1, le=500)
) -> list[ComparisonOut]:
    return await to_thread.run_sync(comparisons.comparisons_out, settings, limit)


@router.post(
    "/comparisons/{comparison_id}/abort",
    response_model=ComparisonOut,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
async def abort_comparison(comparison_id: str, settings: SettingsDep) -> ComparisonOut:
    """Stop a running comparison: its candidate is rejected, what serves keeps serving."""
    return await to_thread.run_sync(comparisons.abort, settings, comparison_id)
