"""What every reader of words (subtitles, speech, on-screen text) hands back."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("subtitle", "speech", "screen")


@dataclass(frozen=True)
class Word:
    """A piece of text at a time in a video: a subtitle cue, a spoken word or phrase, or a word
    (or line) seen on screen. Times are seconds on the video's own timeline."""

    start: float
    end: float
    text: str
    source: str  # one of SOURCES
    language: str = ""  # ISO 639 code where known ("en", "de"), "" where not
    box: tuple[float, float, float, float] | None = None  # screen text: x, y, w, h as fractions of the frame
    confidence: float | None = None  # the engine's own, 0..1, where it gives one

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown word source {self.source!r}")
        if not self.end >= self.start:
            raise ValueError("a word ends before it starts")
