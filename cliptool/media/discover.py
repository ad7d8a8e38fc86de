"""Stage 1: find the video files under the given paths."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cliptool.errors import UsageError

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ogv", ".wmv",
        ".flv", ".ts", ".m2ts", ".mts", ".3gp", ".3g2", ".vob", ".mxf", ".divx", ".asf",
    }
)


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def discover_videos(paths: Iterable[Path]) -> Iterator[Path]:
    """Yields the real paths of video files under `paths` (absolute, `..` and symbolic links
    resolved: one spelling per file), recursively, each once, sorted per folder.

    Hidden files and folders are skipped; symlinked folders are followed once (no loops).
    A path named explicitly is taken even if hidden. Raises UsageError for a missing path.
    """
    seen: set[Path] = set()
    for _, real in discover_spellings(paths):
        if real not in seen:
            seen.add(real)
            yield real


def discover_spellings(paths: Iterable[Path]) -> Iterator[tuple[Path, Path]]:
    """Yields (spelling, real path) for each video file that `discover_videos` walks to, every
    time the walk reaches it: the spelling is its path as walked from the real path of the folder
    given, so one reached through a symbolic link is spelled through the link (a file named
    explicitly: its folder's real path and its own name). Raises UsageError for a missing path."""
    paths = [Path(p).expanduser() for p in paths]
    for p in paths:
        if not p.exists():
            raise UsageError(f"no such file or folder: {p}")
    seen_dirs: set[tuple[int, int]] = set()
    for p in paths:
        if p.is_file():
            yield Path(os.path.realpath(p.absolute().parent)) / p.name, p.resolve()
            continue
        yield from _walk(Path(os.path.realpath(p)), seen_dirs)


def _walk(root: Path, seen_dirs: set[tuple[int, int]]) -> Iterator[tuple[Path, Path]]:
    try:
        st = root.stat()
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_dirs:
        return
    seen_dirs.add(key)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                yield from _walk(path, seen_dirs)
            elif entry.is_file(follow_symlinks=True) and is_video_name(path):
                yield path, path.resolve()
        except OSError:
            continue
