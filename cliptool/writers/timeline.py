"""Hits as an editor's timeline: OpenTimelineIO (.otio) and CMX 3600 EDL (.edl).

One clip per hit, in rank order, back to back on one video track. Each clip's source range is
the hit's span in frames at its file's own frame rate (from the index's record); its media is an
ExternalReference to the file (a file:// URL); its metadata and a marker at the best frame carry
the rank, score and query.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cliptool.errors import CliptoolError, UsageError, printable
from cliptool.writers.files import check_output_file, write_atomic

if TYPE_CHECKING:
    from cliptool.search.searcher import Hit
    from cliptool.store import VideoRecord

OTIO_SUFFIXES = (".otio",)
EDL_SUFFIXES = (".edl",)
REEL_LENGTH = 8  # CMX 3600 reel names: at most 8 characters
_NTSC = (24000 / 1001, 30000 / 1001, 48000 / 1001, 60000 / 1001, 120000 / 1001)


def edit_rate(fps: float) -> float:
    """The editing rate of a stream's average frame rate: the exact NTSC rate (30000/1001) for
    29.97 and its kin, a whole number for a rate within 0.01 of one, else the rate itself."""
    if not fps or fps <= 0:
        return 25.0
    for ntsc in _NTSC:
        if abs(fps - ntsc) < 0.002:
            return ntsc
    if abs(fps - round(fps)) < 0.01:
        return float(round(fps))
    return float(Fraction(fps).limit_denominator(1001))


def file_url(path: str) -> str:
    """file:// URL of a local path (any bytes: undecodable ones are percent-encoded)."""
    return Path(path).absolute().as_uri()


def url_path(url: str) -> str:
    """The local path of a file:// URL (the inverse of `file_url`)."""
    import os
    from urllib.parse import unquote_to_bytes, urlsplit

    parts = urlsplit(url)
    return os.fsdecode(unquote_to_bytes(parts.path)) if parts.scheme == "file" else url


def reel_names(paths: Sequence[str], length: int = REEL_LENGTH) -> dict[str, str]:
    """A distinct reel name of at most `length` characters (A-Z, 0-9) for each path."""
    reels: dict[str, str] = {}
    used: set[str] = set()
    for path in paths:
        if path in reels:
            continue
        base = re.sub(r"[^A-Z0-9]", "", Path(printable(path)).stem.upper()) or "REEL"
        reel = base[:length]
        n = 1
        while reel in used:
            n += 1
            tag = str(n)
            reel = base[: length - len(tag)] + tag
        used.add(reel)
        reels[path] = reel
    return reels


def build_timeline(hits: Sequence[Hit], records: Mapping[str, VideoRecord], *, name: str = "cliptool",
                   query: str | None = None, image: str | None = None, rate: float | None = None) -> Any:
    """An otio.schema.Timeline of the hits (records: video id -> record, for rates and lengths).

    rate: the track's (record side) rate; default the rate most of the hits' files share.
    """
    import opentimelineio as otio

    RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange
    rates = {h.video_id: edit_rate(records[h.video_id].fps if h.video_id in records else 0.0) for h in hits}
    track_rate = rate or (Counter(rates.values()).most_common(1)[0][0] if rates else 25.0)
    reels = reel_names([h.path for h in hits])
    timeline = otio.schema.Timeline(name=name)
    timeline.global_start_time = RT(0, track_rate)
    timeline.metadata["cliptool"] = {"query": query, "image": image, "results": len(hits)}
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for h in hits:
        r = rates[h.video_id]
        first = round(h.start * r)
        frames = max(1, round(h.end * r) - first)
        record = records.get(h.video_id)
        ref = otio.schema.ExternalReference(target_url=file_url(h.path))
        ref.name = Path(printable(h.path)).name
        if record is not None and record.duration > 0:
            ref.available_range = TR(RT(0, r), RT(max(first + frames, round(record.duration * r)), r))
        clip = otio.schema.Clip(name=f"{h.rank:02d} {Path(printable(h.path)).name}", media_reference=ref,
                                source_range=TR(RT(first, r), RT(frames, r)))
        clip.metadata["cliptool"] = {**h.to_dict(), "path": printable(h.path), "query": query, "image": image}
        clip.metadata["cmx_3600"] = {"reel": reels[h.path]}
        best = min(max(round(h.best_time * r), first), first + frames - 1)
        label = f"#{h.rank} score {h.score:.3f}" + (f" {printable(query)}" if query else "")
        clip.markers.append(otio.schema.Marker(
            name=label, marked_range=TR(RT(best, r), RT(0, r)), color=otio.schema.MarkerColor.GREEN,
            metadata={"cliptool": {"rank": h.rank, "score": round(h.score, 6), "best_time": h.best_time}}))
        track.append(clip)
    return timeline


def write_otio(timeline: Any, output: Path) -> None:
    import opentimelineio as otio

    write_atomic(output, otio.adapters.write_to_string(timeline, adapter_name="otio_json").encode("utf-8"))


def write_edl(timeline: Any, output: Path, report: Callable[[str], None] | None = None) -> None:
    """CMX 3600 through OpenTimelineIO's adapter. An EDL has one rate: files at other rates get
    source timecode converted to it (said through `report`)."""
    import opentimelineio as otio

    track = timeline.tracks[0]
    rate = timeline.global_start_time.rate if timeline.global_start_time is not None else 25.0
    others = sorted({c.source_range.start_time.rate for c in track if c.source_range.start_time.rate != rate})
    if others and report is not None:
        report(f"the EDL is at {rate:g} fps; source timecode of clips at {', '.join(f'{r:g}' for r in others)} "
               "fps is converted to it (the .otio keeps each file's own rate)")
    if not len(track):
        raise UsageError("no results to write to an EDL")
    if others:
        # Whole frames at the EDL's rate, source and record durations equal (readers check that).
        timeline = timeline.deepcopy()
        RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange
        for clip in timeline.tracks[0]:
            src = clip.source_range
            if src.start_time.rate != rate:
                clip.source_range = TR(RT(round(src.start_time.to_seconds() * rate), rate),
                                       RT(max(1, round(src.duration.to_seconds() * rate)), rate))
                for marker in clip.markers:
                    at = marker.marked_range.start_time
                    marker.marked_range = TR(RT(round(at.to_seconds() * rate), rate), RT(0, rate))
                clip.media_reference.available_range = None
    try:
        text = otio.adapters.write_to_string(timeline, adapter_name="cmx_3600", rate=rate,
                                             reelname_len=REEL_LENGTH)
    except otio.exceptions.OTIOError as exc:
        raise CliptoolError(f"cannot write the EDL: {exc}") from None
    write_atomic(output, text.encode("utf-8", "replace"))


def write_timelines(hits: Sequence[Hit], records: Mapping[str, VideoRecord], *, otio_path: Path | None = None,
                    edl_path: Path | None = None, query: str | None = None, image: str | None = None,
                    report: Callable[[str], None] | None = None) -> None:
    """Writes the hits as .otio and/or .edl files (checked with `check_outputs` first)."""
    if otio_path is None and edl_path is None:
        return
    name = f"cliptool: {printable(query)}" if query else (f"cliptool: {Path(printable(image)).name}" if image else "cliptool")
    timeline = build_timeline(hits, records, name=name, query=query, image=image)
    if otio_path is not None:
        write_otio(timeline, otio_path)
    if edl_path is not None:
        write_edl(timeline, edl_path, report)


def check_outputs(otio_path: Path | None, edl_path: Path | None) -> tuple[Path | None, Path | None]:
    return (check_output_file(otio_path, OTIO_SUFFIXES, "--otio file") if otio_path is not None else None,
            check_output_file(edl_path, EDL_SUFFIXES, "--edl file") if edl_path is not None else None)
