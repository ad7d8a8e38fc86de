"""What every reader of words (subtitles, speech, on-screen text) hands back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def to_json(self) -> list[Any]:
        """The compact form the scenes store keeps: [start, end, text, source, language, box, confidence]."""
        return [round(self.start, 3), round(self.end, 3), self.text, self.source, self.language,
                list(self.box) if self.box is not None else None, self.confidence]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Word:
        """A word from `to_json`'s form; ValueError (or TypeError) for a malformed one."""
        start, end, text, source, language, box, confidence = raw
        return cls(float(start), float(end), str(text), str(source), str(language or ""),
                   tuple(float(v) for v in box) if box is not None else None,  # type: ignore[arg-type]
                   float(confidence) if confidence is not None else None)
