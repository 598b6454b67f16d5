"""The web dashboard: a single page at ``GET /ui`` and its assets under ``/ui/static/``.

Plain HTML, CSS and JavaScript shipped in ``beam_etl/api/static/`` (no build step, nothing fetched
from the internet). The page itself needs no key; it asks for one and sends it as ``X-API-Key`` on
every API call it makes. See docs/dashboard.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import FileResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: the page loads only its own scripts; the run report (inline styles, data: images) is shown in a
#: sandboxed srcdoc iframe, which inherits this policy
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class _Static(StaticFiles):
    """StaticFiles that revalidates (the assets change with the package) and forbids sniffing."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


async def _index(request: Request) -> Response:
    """The single page (same document for ``/ui`` and ``/ui/``)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


def mount_dashboard(app: FastAPI) -> None:
    """Serves the dashboard on ``app``: ``GET /ui`` (the page) and ``/ui/static/*`` (its assets).

    Both are plain Starlette routes, so API-key dependencies declared on the FastAPI routes do not
    apply to them, and they stay out of the OpenAPI schema.
    """
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(f"dashboard assets missing: {STATIC_DIR / 'index.html'} (is the package data installed?)")
    app.add_route("/ui", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route("/ui/", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/ui/static", _Static(directory=STATIC_DIR), name="dashboard-static")
