"""Words in a video, with their times: subtitles, speech and text on screen."""

from cliptool.analysis.words.base import SOURCES, Word

__all__ = ["SOURCES", "Word"]
