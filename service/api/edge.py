"""What every request passes before a router: its id, its origin's CORS rights, its size.

- Request id: `X-Request-ID` on every response (the client's own when it sent a valid one,
  else a new uuid4), and on every log line written while the request runs (asgi-correlation-id).
- CORS: only when `OSPO_CORS_ORIGINS` names origins (storefront backends call server to server).
- Body size: a body over the limit (`OSPO_MAX_BODY_BYTES` for /v1/*, `_ADMIN_` for /admin/*) is
  refused with 413 before it is read into memory: at once when Content-Length says so, else as
  soon as the streamed bytes pass the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "X-Request-ID"


class BodyLimit:
    """Pure ASGI middleware (a `BaseHTTPMiddleware` would buffer the body it must not read)."""

    def __init__(self, app: ASGIApp, public_bytes: int, admin_bytes: int) -> None:
        self.app = app
        self.public_bytes = public_bytes
        self.admin_bytes = admin_bytes

    def _limit(self, path: str) -> int:
        return self.admin_bytes if path.startswith("/admin") else self.public_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        seen = 0
        over = refused = False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Stop reading: the app gets a truncated body and answers something; that
                    # answer is replaced by the 413 below.
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if not over:
                await send(message)
            elif message["type"] == "http.response.start" and not refused:
                refused = True
                await _refuse(send, limit)

        await self.app(scope, counted, guarded_send)
        if over and not refused:
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": {"code": "too_large", "message": f"request body over {limit} bytes"}}
    ).encode()
    await send({
        "type": "http.response.start",
        "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def install_edge(app: FastAPI, settings: Settings) -> None:
    """Middlewares run outermost-last-added: request id, then CORS, then the size check."""
    app.add_middleware(BodyLimit, public_bytes=settings.max_body_bytes,
                       admin_bytes=settings.max_admin_body_bytes)  # fmt: skip
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER)
