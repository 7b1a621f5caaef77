"""Errors that carry their HTTP status, a stable machine-readable code and, where the status
calls for them, response headers (`Retry-After` on 429)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class TooLarge(ServiceError):
    status_code = 413
    code = "too_large"


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


class RateLimited(ServiceError):
    status_code = 429
    code = "rate_limited"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class WorkerTimeout(ServiceError):
    """A request that waits on a worker got no answer in time (the work may still finish)."""

    status_code = 504
    code = "worker_timeout"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
