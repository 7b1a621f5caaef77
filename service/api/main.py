"""ASGI entry point: `uvicorn service.api.main:app` (settings from the environment)."""

from service.api.app import create_app

app = create_app()
