"""Small helpers the writers share: output paths, names, atomic writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cliptool.errors import UsageError, printable


def check_output_file(output: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Validates a file to be written before any work: its suffix and an existing folder."""
    output = Path(output).expanduser()
    if suffixes and output.suffix.lower() not in suffixes:
        raise UsageError(f"{what} must end in {' or '.join(suffixes)}: {printable(str(output))}")
    if output.is_dir():
        raise UsageError(f"{what} is a folder: {printable(str(output))}")
    if not output.parent.is_dir():
        raise UsageError(f"output folder does not exist: {printable(str(output.parent))}")
    return output


def write_atomic(output: Path, data: bytes) -> None:
    """Writes `data` to `output` through a temporary file in the same folder."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {printable(str(output))}: {exc.strerror or exc}") from None


def safe_stem(path: str, limit: int = 40) -> str:
    """A file-name-safe short form of a video's name: letters, digits, '-', '_' and '.'."""
    stem = Path(printable(path)).stem
    stem = re.sub(r"[^\w.-]+", "_", stem, flags=re.ASCII).strip("._")
    return stem[:limit] or "video"


def time_tag(seconds: float) -> str:
    """00-01-02.480: HH:MM:SS.mmm with dashes, safe in file names on every system."""
    from cliptool.media.timecode import format_time

    return format_time(seconds).replace(":", "-")
