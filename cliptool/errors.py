"""Errors a user can act on. Each carries a one-line message and a process exit code."""

from __future__ import annotations


def one_line(exc: BaseException, text: str | None = None) -> str:
    """The first line of `text` (default: the exception's message), else the exception's type."""
    text = (str(exc) if text is None else text).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def printable(text: str) -> str:
    """A path or message that can be written as UTF-8 (undecodable name bytes become U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class CliptoolError(Exception):
    """Base of every error cliptool reports to a user in one line."""

    exit_code = 1


class UsageError(CliptoolError):
    """Bad input on the command line: a missing path, an empty query, a bad option value."""

    exit_code = 2


class NothingToDoError(CliptoolError):
    """The input was valid but held nothing to work on (no videos in a folder)."""

    exit_code = 3


class IndexMissingError(CliptoolError):
    """No index exists yet at the index directory, or it holds nothing to search."""

    exit_code = 3


class IndexBusyError(CliptoolError):
    """Another process holds the index."""

    exit_code = 4


class IndexMismatchError(CliptoolError):
    """The index was built by another model or schema version."""

    exit_code = 5


class ModelUnavailableError(CliptoolError):
    """The model or its weights cannot be loaded."""

    exit_code = 6


class ClusterError(CliptoolError):
    """A Ray cluster cannot be reached, or has no worker left to run on."""

    exit_code = 10


class VideoError(CliptoolError):
    """A video cannot be opened or decoded."""

    exit_code = 7
