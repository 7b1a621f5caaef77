"""`Annotated` dependencies shared by the routers."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from service.errors import Unauthorized
from service.services.admin import IndexRebuilds
from service.services.promotion import ServingAdapters
from service.services.rules import RuleCache
from service.services.search import SearchService
from service.services.search_log import SearchLogWriter
from service.settings import Settings
from service.state import RetrieverHolder
from service.workers import WorkerPresence


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _search_service(request: Request) -> SearchService:
    return request.app.state.search_service


def _search_log(request: Request) -> SearchLogWriter:
    return request.app.state.search_log


def _retrievers(request: Request) -> RetrieverHolder:
    return request.app.state.retrievers


def _index_rebuilds(request: Request) -> IndexRebuilds:
    return request.app.state.index_rebuilds


def _serving_adapters(request: Request) -> ServingAdapters:
    return request.app.state.serving_adapters


def _rule_cache(request: Request) -> RuleCache:
    return request.app.state.rule_cache


def _workers(request: Request) -> WorkerPresence:
    return request.app.state.workers


def require_admin(
    settings: Annotated[Settings, Depends(_settings)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    expected = settings.admin_api_key.get_secret_value()
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("admin endpoints need `Authorization: Bearer <OSPO_ADMIN_API_KEY>`")


SettingsDep = Annotated[Settings, Depends(_settings)]
SearchServiceDep = Annotated[SearchService, Depends(_search_service)]
SearchLogDep = Annotated[SearchLogWriter, Depends(_search_log)]
RetrieversDep = Annotated[RetrieverHolder, Depends(_retrievers)]
IndexRebuildsDep = Annotated[IndexRebuilds, Depends(_index_rebuilds)]
ServingAdaptersDep = Annotated[ServingAdapters, Depends(_serving_adapters)]
RuleCacheDep = Annotated[RuleCache, Depends(_rule_cache)]
WorkersDep = Annotated[WorkerPresence, Depends(_workers)]
AdminDep = Depends(require_admin)
