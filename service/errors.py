"""Errors that carry their HTTP status and a stable machine-readable code."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class NoLabels(NotFound):
    """A query has no judged products, so nothing can be scored or explained for it. Raised by
    the explain task on a worker; Celery carries the type back to the API (404)."""

    code = "no_labels"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
