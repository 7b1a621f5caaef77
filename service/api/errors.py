"""Every error leaves the API as `{"error": {"code", "message"}}` with its proper status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import ServiceError

log = logging.getLogger(__name__)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts[:10]) + (f" (and {len(parts) - 10} more)" if len(parts) > 10 else "")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The database is unreachable or restarting: nothing of this request was stored (its
        # transaction rolled back), so the client may safely send it again.
        log.warning("database unavailable: %s", str(exc).splitlines()[0][:200])
        return JSONResponse(
            error_body("database_unavailable", "the database is unavailable; nothing was "
                       "stored, retry shortly"),
            status_code=503,
            headers={"Retry-After": "1"},
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_input", _validation_message(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400: a body it could not decode (bytes that are not UTF-8). It is
            # invalid input like any other, so it gets the documented 422.
            return JSONResponse(
                error_body("invalid_input", "the body is not UTF-8 encoded JSON"),
                status_code=422,
            )
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the methods of the first route whose path matched; a path
            # served by several routes (GET and POST /admin/rules) allows all of theirs.
            allowed = sorted(
                {
                    m
                    for route in request.app.router.routes
                    if route.matches(request.scope)[0] != Match.NONE
                    for m in getattr(route, "methods", None) or ()
                }
            )
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
        )
