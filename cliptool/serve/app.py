"""The app factory of `cliptool serve`: one ServeState (the index, its lock, caches; state.py),
the error handlers that answer every failure as one line of JSON, and the routes, one router per
group: the page (routes_page.py), the index's contents (routes_library.py), searching
(routes_search.py), media and pictures (routes_media.py). security.py's Guard is in front of
them all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from cliptool.errors import CliptoolError, one_line
from cliptool.serve import routes_library, routes_media, routes_page, routes_search
from cliptool.serve.errors import ApiError, error_response, status_of
from cliptool.serve.security import Guard
from cliptool.serve.state import ServeState

log = logging.getLogger("cliptool.serve")


def create_app(index_dir: Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Any:
    """The ASGI app (FastAPI behind the security middleware) for an index directory."""
    state = ServeState(index_dir, host=host, port=port, token=token)
    app = FastAPI(title="cliptool", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cliptool = state
    _add_error_handlers(app)
    app.include_router(routes_page.make_router())
    app.include_router(routes_library.make_router(state))
    app.include_router(routes_search.make_router(state))
    app.include_router(routes_media.make_router(state))
    return Guard(app, bound_host=host, port=port, token=token)


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure answered as {"error": one line}: ours, the index's, FastAPI's, and the unexpected."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(CliptoolError)
    async def _cliptool_error(request: Request, exc: CliptoolError) -> JSONResponse:
        return error_response(status_of(exc), one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return error_response(exc.status_code, {"Not Found": "not found", "Method Not Allowed": "method not allowed"}
                              .get(message, message))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return error_response(400, f"bad parameter {where}: {first.get('msg', 'invalid')}".strip())

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.warning("cliptool serve: %s %s failed: %s: %s", request.method, request.url.path,
                    type(exc).__name__, one_line(exc))
        return error_response(500, f"internal error ({type(exc).__name__}); the server is still up")
