"""The web console under /console: static HTML, CSS and JavaScript modules, no build step.

The files carry no data: every figure on the page comes from `/admin/*` and `/v1/search`
calls made by the browser with the admin key the page asks for (kept in sessionStorage), so
serving the files themselves needs no key. What may be served is the fixed set of files found
under `service/api/console/static` at import time, looked up by name: a request path never
touches the filesystem, so no `..` can escape the folder.

Every answer carries a Content-Security-Policy that allows only this origin: the console loads
nothing from the network (no CDN, no fonts, no inline script), and a browser enforces that.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.api.console import STATIC_DIR, console_files
from service.errors import NotFound

router = APIRouter(prefix="/console", include_in_schema=False)

# Inline `style=` attributes are refused too: the scripts set styles through the CSSOM
# (element.style), which the policy allows, and SVG colours as presentation attributes.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change only with a deploy; revalidating is cheap and never shows a stale mix
    # of modules after an upgrade.
    "Cache-Control": "no-cache",
}

FILES = console_files()


@router.get("")
async def console_root() -> RedirectResponse:
    # Relative URLs in index.html resolve against /console/, not /.
    return RedirectResponse("/console/", status_code=308)


@router.get("/{path:path}")
async def console_file(path: str) -> FileResponse:
    name = path or "index.html"
    found = FILES.get(name)
    if found is None:
        raise NotFound(f"no console file {name!r}")
    relative, media_type = found
    return FileResponse(STATIC_DIR / relative, media_type=media_type, headers=SECURITY_HEADERS)
