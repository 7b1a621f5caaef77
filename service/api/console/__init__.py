"""The web console's static files (HTML, one CSS file, one JavaScript module per tab).

No build step and no third-party code: the page is plain ES modules the browser loads from
/console, and the charts are drawn as SVG by `static/js/charts.js`.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Only these kinds are served; anything else in the folder (an editor's backup) is not.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def console_files(root: Path = STATIC_DIR) -> dict[str, tuple[str, str]]:
    """{URL path under /console/: (path relative to `root`, media type)} of the servable files."""
    return {
        p.relative_to(root).as_posix(): (p.relative_to(root).as_posix(), MEDIA_TYPES[p.suffix])
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in MEDIA_TYPES
    }
