"""How every `ospo` process logs: one stderr handler, each line tagged with the request id.

The id comes from asgi-correlation-id (`service.api.edge`): the API's lines written while a
request runs carry its `X-Request-ID`, other lines carry `-`. Nothing logs request bodies or
headers (the admin key travels in a header); uvicorn's access log is off by default.
"""

from __future__ import annotations

import logging

from asgi_correlation_id import CorrelationIdFilter

FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"


def configure_logging(level: str | int) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per policy call is noise
