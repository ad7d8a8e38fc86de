"""Files answered with HTTP Range support (206 partial content, 416 for a range past the end),
and what a browser can play."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import BinaryIO
from email.utils import formatdate
from pathlib import Path

from starlette.responses import Response, StreamingResponse

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

# container -> the type a browser plays it as; codec -> its codecs= string for canPlayType
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm",
         ".mkv": "video/webm", ".ogv": "video/ogg", ".ogg": "video/ogg"}
_CODECS = {"h264": "avc1.42E01E", "vp8": "vp8", "vp9": "vp9", "av1": "av01.0.05M.08", "theora": "theora",
           "hevc": "hvc1.1.6.L93.B0"}


def browser_type(path: str, codec: str) -> str | None:
    """The `type` a browser may play this video as (container and codec both web formats), or
    None: AVI, MPEG-PS/TS, WMV, FLV, MJPEG, MPEG-2/4 part 2, Indeo... are shown as frames."""
    mime = _MIME.get(Path(path).suffix.lower())
    codecs = _CODECS.get((codec or "").lower())
    if mime is None or codecs is None:
        return None
    return f'{mime}; codecs="{codecs}"'


def content_type(path: str) -> str:
    return _MIME.get(Path(path).suffix.lower(), "application/octet-stream")


def _read(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(first, last) byte of a single range; None to answer the whole file (no, several or
    unparsable ranges: a server may ignore Range); "unsatisfiable" for a range past the end."""
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":  # the last b bytes
        n = int(b)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(a)
    last = int(b) if b else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


def file_response(path: str, range_header: str | None, mime: str, head: bool = False) -> Response:
    """The file (or the Range asked for). It is opened here, so a file deleted meanwhile is an
    OSError now, not a response cut short after its headers."""
    f = open(path, "rb")
    try:
        return _file_response(f, range_header, mime, head)
    except BaseException:
        f.close()
        raise


def _file_response(f: BinaryIO, range_header: str | None, mime: str, head: bool) -> Response:
    st = os.fstat(f.fileno())
    size = st.st_size
    headers = {"accept-ranges": "bytes", "last-modified": formatdate(st.st_mtime, usegmt=True),
               "cache-control": "private, max-age=0"}
    span = parse_range(range_header, size) if range_header else None
    if span == "unsatisfiable":
        f.close()
        return Response(b'{"error": "range not satisfiable"}\n', status_code=416,
                        headers={**headers, "content-range": f"bytes */{size}"}, media_type="application/json")
    if span is None:
        first, last, status = 0, size - 1, 200
    else:
        first, last = span  # type: ignore[misc]
        status = 206
        headers["content-range"] = f"bytes {first}-{last}/{size}"
    length = max(0, last - first + 1)
    headers["content-length"] = str(length)
    if head:
        f.close()
        return Response(b"", status_code=status, headers=headers, media_type=mime)
    return StreamingResponse(_read(f, first, length), status_code=status, headers=headers, media_type=mime)
