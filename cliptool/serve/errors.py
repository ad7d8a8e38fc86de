"""The web app's errors: each is answered as one line of JSON, {"error": "..."}, never cached."""

from __future__ import annotations

from starlette.responses import JSONResponse

from cliptool.errors import CliptoolError, IndexBusyError, IndexMismatchError, IndexMissingError, one_line


class ApiError(Exception):
    """A refused request: its HTTP status and the one-line message answered."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(exc: CliptoolError) -> int:
    """The HTTP status for a cliptool error: 404 no index, 503 busy, 409 another model, else 400."""
    if isinstance(exc, IndexMissingError):
        return 404
    if isinstance(exc, IndexBusyError):
        return 503
    if isinstance(exc, IndexMismatchError):
        return 409
    return 400


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer to a refused or failed request: {"error": one line}."""
    return JSONResponse({"error": one_line(Exception(message)) if "\n" in message else message},
                        status_code=status, headers={"cache-control": "no-store", **(headers or {})})
