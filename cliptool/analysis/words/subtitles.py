"""Subtitles as words: sidecar files beside a video (`movie.srt`, `movie.en.vtt`, `movie.de.ass`)
and the text subtitle tracks inside its container (subrip, mov_text, ass/ssa, webvtt), each cue a
`Word(source="subtitle")` with its times and language.

Sidecars are read with pysubs2; tracks are demuxed and decoded with PyAV, their times on the
video stream's timeline (as media.decode gives frame times). A sidecar that cannot be read is
reported and left out; it never fails the video.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from cliptool.analysis.words.base import Word

SIDECAR_SUFFIXES = (".srt", ".vtt", ".ass", ".ssa")
TEXT_CODECS = ("subrip", "srt", "mov_text", "ass", "ssa", "webvtt", "text")
MAX_SIDECAR_BYTES = 32 * 1024 * 1024  # a subtitle file larger than this is not one (a film's has ~100 kB)
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")

Reporter = Callable[[str], None]


def sidecars(video: Path, names: Iterable[str] | None = None) -> list[tuple[Path, str]]:
    """The subtitle files beside `video`, with the language their name gives ("" when none):
    same stem and a subtitle suffix, optionally a language between (`clip.en.srt`, `clip.pt-BR.vtt`).
    `names`: the folder's entries when the caller has listed it already."""
    video = Path(video)
    if names is None:
        try:
            names = os.listdir(video.parent)
        except OSError:
            return []
    stem = video.stem
    out = []
    for name in sorted(names):
        base, suffix = os.path.splitext(name)
        if suffix.lower() not in SIDECAR_SUFFIXES:
            continue
        if base == stem:
            out.append((video.parent / name, ""))
        elif base.startswith(stem + ".") and _LANGUAGE.match(base[len(stem) + 1:]):
            out.append((video.parent / name, base[len(stem) + 1:].lower().replace("_", "-")))
    return out


def sidecar_fingerprint(video: Path, names: Iterable[str] | None = None) -> list[list[object]]:
    """What the sidecars of `video` are now: [name, size, mtime] each, for spotting a change."""
    out: list[list[object]] = []
    for path, _ in sidecars(video, names):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append([path.name, st.st_size, st.st_mtime])
    return out


def _plain(text: str) -> str:
    """A cue's text without ASS override tags and with line breaks as spaces."""
    import pysubs2

    plain = pysubs2.SSAEvent(text=text).plaintext
    plain = re.sub(r"<[^>]{1,40}>", "", plain)  # WebVTT/SRT inline tags (<i>, <c.yellow>, <v Bob>)
    return " ".join(plain.split())


def read_sidecar(path: Path, language: str = "") -> list[Word]:
    """The cues of one subtitle file as words; ValueError for a file pysubs2 cannot read (or
    one too large to be subtitles)."""
    import pysubs2

    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise ValueError(f"too large for a subtitle file (over {MAX_SIDECAR_BYTES // (1024 * 1024)} MB)")

    try:
        try:
            subs = pysubs2.load(str(path), encoding="utf-8")
        except UnicodeDecodeError:
            subs = pysubs2.load(str(path), encoding="latin-1")
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - pysubs2 raises many kinds for a bad file
        raise ValueError(f"not a readable subtitle file ({type(exc).__name__})") from None
    words = []
    for event in subs.events:
        if event.is_comment:
            continue
        text = _plain(event.text)
        if not text or event.end < event.start:
            continue
        words.append(Word(event.start / 1000.0, event.end / 1000.0, text, "subtitle", language))
    return words


def read_tracks(video: Path) -> list[Word]:
    """The cues of the text subtitle tracks inside the container, times on the video stream's
    timeline; [] when it has none (bitmap tracks, such as DVD or PGS, are left out)."""
    import av

    words: list[Word] = []
    try:
        container = av.open(str(video))
    except Exception:  # noqa: BLE001 - the picture pass reports an unreadable file
        return []
    with container:
        tracks = [s for s in container.streams.subtitles if (s.codec_context.name or "") in TEXT_CODECS]
        if not tracks:
            return []
        vstream = container.streams.video[0] if container.streams.video else None
        base = float(vstream.start_time * vstream.time_base) if vstream is not None and vstream.start_time else 0.0
        languages = {s.index: _track_language(s.metadata.get("language", "")) for s in tracks}
        for packet in container.demux(tracks):
            if packet.size == 0 or packet.pts is None or packet.time_base is None:
                continue
            start = float(packet.pts * packet.time_base) - base
            duration = float((packet.duration or 0) * packet.time_base)
            try:
                subs = packet.decode()
            except Exception:  # noqa: BLE001 - one damaged cue must not lose the others
                continue
            texts = [_plain(_dialogue(s)) for s in subs]
            text = " ".join(t for t in texts if t)
            if text:
                words.append(Word(max(0.0, start), max(0.0, start) + max(duration, 0.0), text, "subtitle",
                                  languages.get(packet.stream.index, "")))
    return words


def _dialogue(sub: object) -> str:
    """The text of a decoded subtitle: an ASS event line's text field, or a plain text one."""
    raw = getattr(sub, "ass", None)
    if raw:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return line.split(",", 8)[-1] if line.count(",") >= 8 else line
    text = getattr(sub, "text", b"")
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _track_language(tag: str) -> str:
    tag = (tag or "").strip().lower()
    return "" if tag in ("und", "unk", "") else tag


def read_subtitles(video: Path, report: Reporter | None = None, names: Iterable[str] | None = None) -> list[Word]:
    """Every subtitle cue of a video, from its sidecars and its text tracks, by start time."""
    words = read_tracks(video)
    for path, language in sidecars(video, names):
        try:
            words += read_sidecar(path, language)
        except (OSError, ValueError) as exc:
            if report is not None:
                report(f"warning: subtitles {path}: {getattr(exc, 'strerror', None) or exc}")
    return sorted(words, key=lambda w: (w.start, w.end))


__all__ = ["MAX_SIDECAR_BYTES", "SIDECAR_SUFFIXES", "TEXT_CODECS", "read_sidecar", "read_subtitles", "read_tracks", "sidecar_fingerprint",
           "sidecars"]
