"""An index run's progress bar on stderr, in seconds of video decoded (not videos), with the rate
(seconds of video a second: the speed against real time) and the time left. The videos' lengths
are read from their containers on a thread beside the run, so the bar starts at once and its
total grows to the whole plan's within moments."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of video "
              "[{elapsed}<{remaining}, {rate_fmt}]{postfix}")


def video_length(path: Path) -> float:
    """The container's length of a video in seconds (0 when it cannot say)."""
    from cliptool.media.decode import VideoReader

    try:
        with VideoReader(path) as reader:
            return max(0.0, reader.info.duration)
    except Exception:  # noqa: BLE001 - a file the run will report on its own; it counts for nothing here
        return 0.0


class RunProgress:
    """`tqdm` over the seconds of video in `paths`; shown when `enabled`, or with None on a
    terminal only."""

    def __init__(self, paths: list[Path], tqdm: Any, enabled: bool | None) -> None:
        self.bar = tqdm(total=0, unit="s", desc="indexing", file=sys.stderr, bar_format=BAR_FORMAT,
                        disable={True: False, False: True, None: None}[enabled])
        self._lengths: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._reached = 0.0  # seconds of the current video counted so far
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None
        self.enabled = not self.bar.disable
        if self.enabled and paths:
            self._prober = threading.Thread(target=self._probe, args=(paths,), name="cliptool-lengths", daemon=True)
            self._prober.start()

    def _probe(self, paths: list[Path]) -> None:
        for path in paths:
            if self._stop.is_set():
                return
            self.length(path)
            self.bar.refresh()

    def length(self, path: Path) -> float:
        """A video's length, measured once (by the prober, or here when a video gets ahead of it)
        and added to the bar's total then."""
        with self._lock:
            known = self._lengths.get(path)
        if known is not None:
            return known
        length = video_length(path)
        with self._lock:
            if path not in self._lengths:
                self._lengths[path] = length
                self.bar.total += length
            return self._lengths[path]

    def start(self, path: Path) -> None:
        """A video begins decoding here."""
        self._current, self._reached = path, 0.0
        self.bar.set_postfix_str(path.name[-40:])

    def at(self, t: float) -> None:
        """The current video is decoded up to `t` seconds (called per frame; cheap)."""
        if self.enabled and t - self._reached >= 0.5:
            step = min(t, self.length(self._current) if self._current else t) - self._reached
            if step > 0:
                self._reached += step
                self.bar.update(step)

    def done(self, path: Path) -> None:
        """A video is finished (analysed here or elsewhere, or failed): it counts whole."""
        path = Path(path)
        if not self.enabled:
            return
        counted = self._reached if path == self._current else 0.0
        rest = self.length(path) - counted
        if rest > 0:
            self.bar.update(rest)
        if path == self._current:
            self._current, self._reached = None, 0.0

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self._stop.set()
        if self._prober is not None:
            self._prober.join(timeout=5)
        self.bar.close()
