from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import SearchServiceDep
from service.api.ratelimit import RETRY_AFTER, SearchRateLimit
from service.schemas.public import ErrorResponse, SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


@router.post(
    "/search",
    response_model=SearchResponse,
    responses={
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "headers": RETRY_AFTER},
        503: {"model": ErrorResponse},
    },
)
async def search(
    body: SearchRequest, service: SearchServiceDep, _: SearchRateLimit
) -> SearchResponse:
    """Rewrite the query with the active policy, retrieve k products, log the search."""
    return await service.search(body)
