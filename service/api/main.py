"""ASGI entry point: `uvicorn service.api.main:app`."""

from service.api.wiring import build_app

app = build_app()
