"""A request's query parameters, read strictly: each given at most once, numbers, flags and the
search filters checked; a bad one is refused with ApiError(400)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi import Request

from cliptool.serve.errors import ApiError

if TYPE_CHECKING:
    from cliptool.search.filters import Filters


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


FILTER_PARAMS = ("in", "since", "until", "min_duration", "max_duration", "min_score")
_OPTION_NAMES = {"--in": "in", "--since": "since", "--until": "until", "--min-duration": "min_duration",
                 "--max-duration": "max_duration", "--min-score": "min_score"}


def filters_param(request: Request) -> Filters | None:
    """The CLI's search filters from the query parameters (None when none is given):
    in=FOLDER (repeatable; an absolute path compared with the indexed paths, never opened),
    since / until (YYYY-MM-DD or an ISO date and time), min_duration / max_duration (90, 1:30,
    2m, 1h30m) and min_score. 400, naming the parameter, for a bad value."""
    from cliptool.errors import UsageError
    from cliptool.search.filters import Filters

    values = {name: one_param(request, name) for name in FILTER_PARAMS if name != "in"}
    values = {k: v for k, v in values.items() if v is not None and v.strip()}
    for name, value in values.items():
        if len(value) > 64:
            raise ApiError(400, f"{name} is too long")
    folders = [folder_param(f) for f in request.query_params.getlist("in") if f.strip()]
    if len(folders) > 16:
        raise ApiError(400, "give in at most 16 times")
    if not values and not folders:
        return None
    try:
        where = Filters.parse([], since=values.get("since"), until=values.get("until"),
                              min_duration=values.get("min_duration"), max_duration=values.get("max_duration"),
                              min_score=values.get("min_score"))
    except UsageError as exc:
        message = str(exc)
        for option, name in _OPTION_NAMES.items():
            message = message.replace(option, name)
        raise ApiError(400, message) from None
    return replace(where, under=tuple(folders))


def folder_param(value: str) -> str:
    """An absolute folder path, normalised (`..` and doubled slashes taken out) but never looked
    up on disk: it is only compared with the paths the index recorded."""
    import os

    if len(value) > 4096 or "\0" in value or any(ord(c) < 32 for c in value):
        raise ApiError(400, "in must be a folder's absolute path")
    if not os.path.isabs(value):
        raise ApiError(400, "in must be a folder's absolute path (as the indexed paths are)")
    return os.path.normpath(value)
