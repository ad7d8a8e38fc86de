"""The page: index.html with its security headers, its two static files, and no favicon."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from cliptool.serve.errors import ApiError

STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def make_router() -> APIRouter:
    """The routes /, /static/{name} and /favicon.ico (they need nothing of the index)."""
    router = APIRouter()

    @router.get("/")
    def page() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff",
                                 "referrer-policy": "no-referrer", "x-frame-options": "DENY",
                                 "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; "
                                 "media-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"})

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC_FILES:
            raise ApiError(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_FILES[name],
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})

    @router.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    return router
