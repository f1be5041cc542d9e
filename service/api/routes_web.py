"""The web page: ``GET /`` and its script and style under ``/web/``, plain files from ``service/api/web``.

Only the files named in ``WEB_FILES`` are served (no path from the request ever reaches the filesystem), each
with a strict Content-Security-Policy: the page loads nothing but these files and talks to nothing but this
API, so it works offline and behind a firewall, and injected markup could neither run nor send anything out.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

WEB_DIR = Path(__file__).parent / "web"
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (ETag, Last-Modified): a new release's page never runs an old script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return _web_file("index.html")


@router.get("/web/{name}")
async def web_file(name: str) -> FileResponse:
    return _web_file(name)


def _web_file(name: str) -> FileResponse:
    media_type = WEB_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"No web file '{name}'.")
    return FileResponse(WEB_DIR / name, media_type=media_type, headers=_HEADERS)
