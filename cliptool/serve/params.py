"""A request's query parameters, read strictly: each given at most once, numbers and flags
checked; a bad one is refused with ApiError(400)."""

from __future__ import annotations

from fastapi import Request

from cliptool.serve.errors import ApiError


def one_param(request: Request, name: str) -> str | None:
    """The query parameter `name`, or None; 400 if it is given more than once."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"give {name} once")
    return values[0] if values else None


def int_param(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """A whole number between lo and hi (`default` when absent or empty)."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not lo <= n <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return n


def flag_param(value: str | None, name: str) -> bool:
    """A yes/no flag: 1, true, yes or 0, false, no (absent or empty: no)."""
    if value in (None, "", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"{name} must be 0 or 1")
