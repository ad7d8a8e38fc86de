"""Times as people write them: HH:MM:SS.mmm."""

from __future__ import annotations

from cliptool.errors import UsageError


def format_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def parse_time(text: str) -> float:
    """Seconds from "62.5", "1:02.5" or "00:01:02.5"; UsageError otherwise."""
    parts = text.strip().split(":")
    try:
        if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"not a time: {text!r} (use seconds or HH:MM:SS.mmm)") from None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    if seconds < 0 or any(v < 0 for v in values):
        raise UsageError(f"time must not be negative: {text!r}")
    return seconds
