"""Compose the app from settings: the rewriter chosen by `OSPO_POLICY_BACKEND`."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.app import create_app
from service.settings import Settings, get_settings


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    return create_app(settings)
