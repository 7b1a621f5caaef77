"""Merchandising rules (bearer `OSPO_ADMIN_API_KEY`): synonyms, pins and hides.

Thin: each endpoint calls one use case of service/services/rules.py, then refreshes this
process's rule book so its own next search sees the edit (other processes within
OSPO_RULES_REFRESH_S).
"""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Response

from service.api.deps import AdminDep, RuleCacheDep, SettingsDep
from service.schemas.public import ErrorResponse
from service.schemas.rules import RuleIn, RuleOut
from service.services import rules

router = APIRouter(
    prefix="/admin",
    tags=["rules"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorResponse}},
)


@router.get("/rules", response_model=list[RuleOut])
async def list_rules(settings: SettingsDep) -> list[RuleOut]:
    return await to_thread.run_sync(rules.rules_list, settings.resolved_database_url)


@router.post(
    "/rules", response_model=RuleOut, status_code=201, responses={422: {"model": ErrorResponse}}
)
async def create_rule(body: RuleIn, settings: SettingsDep, cache: RuleCacheDep) -> RuleOut:
    out = await to_thread.run_sync(rules.rule_create, settings.resolved_database_url, body)
    await to_thread.run_sync(cache.reload)
    return out


@router.put(
    "/rules/{rule_id}",
    response_model=RuleOut,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def update_rule(
    rule_id: int, body: RuleIn, settings: SettingsDep, cache: RuleCacheDep
) -> RuleOut:
    out = await to_thread.run_sync(rules.rule_update, settings.resolved_database_url, rule_id, body)
    await to_thread.run_sync(cache.reload)
    return out


@router.delete("/rules/{rule_id}", status_code=204, responses={404: {"model": ErrorResponse}})
async def delete_rule(rule_id: int, settings: SettingsDep, cache: RuleCacheDep) -> Response:
    await to_thread.run_sync(rules.rule_delete, settings.resolved_database_url, rule_id)
    await to_thread.run_sync(cache.reload)
    return Response(status_code=204)
