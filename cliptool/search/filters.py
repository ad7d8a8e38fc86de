"""Which videos may answer a search (folder, file date, length) and the lowest score a hit may
have, parsed from what a user wrote."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

from cliptool.errors import UsageError
from cliptool.store import VideoRecord, path_under, real_path

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNITS = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)h)?(?:(\d+(?:\.\d*)?|\.\d+)m(?:in)?)?(?:(\d+(?:\.\d*)?|\.\d+)s)?$")


def parse_date(text: str, option: str, *, end_of_day: bool = False) -> float:
    """Seconds since the epoch of YYYY-MM-DD (local midnight; with end_of_day the last moment
    of that day) or of an ISO date and time (`2024-05-01T14:30`, `...+02:00`, `...Z`; local
    time when it names no zone)."""
    from datetime import datetime, timedelta

    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option}: not a date: {text!r} (use YYYY-MM-DD or an ISO date and time "
                         "such as 2024-05-01T14:30)") from None
    if _DATE_ONLY.match(value) and end_of_day:
        return (moment + timedelta(days=1)).timestamp() - 1e-6
    return moment.timestamp()


def parse_duration(text: str, option: str) -> float:
    """Seconds from `90`, `1:30`, `01:02:03.5`, `2m`, `1h30m` or `45s`."""
    value = text.strip().lower().replace(" ", "")
    units = _UNITS.match(value)
    if value and units and any(units.groups()):
        h, m, s = (float(g) if g else 0.0 for g in units.groups())
        return h * 3600 + m * 60 + s
    from cliptool.media.timecode import parse_time

    try:
        return parse_time(value)
    except UsageError:
        raise UsageError(f"{option}: not a duration: {text!r} (use seconds, M:SS, H:MM:SS, 2m or 1h30m)") from None


class VideoFacts(NamedTuple):
    """What filters look at in a video: its real path, file date (mtime) and length (s)."""

    path: str
    mtime: float
    duration: float


@dataclass(frozen=True)
class Filters:
    """Which hits may answer: videos under some folders (real paths), whose file date (the
    modification time the index recorded) lies in [since, until] and whose length lies in
    [min_duration, max_duration] seconds; and hits scoring at least min_score."""

    under: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    min_score: float | None = None

    @classmethod
    def parse(cls, under: Sequence[str | os.PathLike[str]] = (), *, since: str | None = None,
              until: str | None = None, min_duration: str | None = None, max_duration: str | None = None,
              min_score: str | float | None = None) -> Filters:
        """Filters from what a user wrote (see parse_date, parse_duration); UsageError, naming
        the option, for a bad value."""
        folders = []
        for folder in under:
            if not str(folder).strip():
                raise UsageError("--in: empty folder")
            folders.append(real_path(folder))
        score = None
        if min_score is not None:
            try:
                score = float(min_score)
            except ValueError:
                raise UsageError(f"--min-score: not a number: {min_score!r}") from None
            if not math.isfinite(score):
                raise UsageError(f"--min-score: not a number: {min_score!r}")
        lo = parse_date(since, "--since") if since is not None else None
        hi = parse_date(until, "--until", end_of_day=True) if until is not None else None
        if lo is not None and hi is not None and lo > hi:
            raise UsageError(f"--since {since} is after --until {until}")
        shortest = parse_duration(min_duration, "--min-duration") if min_duration is not None else None
        longest = parse_duration(max_duration, "--max-duration") if max_duration is not None else None
        if shortest is not None and longest is not None and shortest > longest:
            raise UsageError(f"--min-duration {min_duration} is longer than --max-duration {max_duration}")
        return cls(tuple(folders), lo, hi, shortest, longest, score)

    @property
    def narrows_videos(self) -> bool:
        """Whether some videos may be left out (else only min_score, if anything, applies)."""
        return bool(self.under) or any(v is not None for v in (self.since, self.until, self.min_duration,
                                                               self.max_duration))

    def allows(self, record: VideoFacts | VideoRecord | None) -> bool:
        """Whether a video (its facts or record) may answer."""
        if record is None:
            return False
        if self.under and not path_under(record.path, self.under):
            return False
        if self.since is not None and record.mtime < self.since:
            return False
        if self.until is not None and record.mtime > self.until:
            return False
        if self.min_duration is not None and record.duration < self.min_duration:
            return False
        return self.max_duration is None or record.duration <= self.max_duration

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}
