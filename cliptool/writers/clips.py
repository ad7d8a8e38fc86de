"""Each hit's span as a video file of its own, named in rank order, plus manifest.json.

Default: stream copy (no re-encoding, fast, the file's own quality). A stream can only start
cleanly at a key frame, so a clip starts at the nearest key frame at or before the hit's start;
the manifest says where it really starts and ends. Packets are taken in decode order until one
is decoded at or after the end, so the frames a picture before the end depends on are there (a
clip may show a frame or two past the end). The first audio stream is copied alongside.
An H.264 clip's first picture carries what a decoder learns at the start of the source: the
x264 version SEI (x264 writes it once, in the first picture; without it a decoder takes the
stream for a recent x264's, and 4:4:4 streams from x264 before build 151 decode green) and, in
an Annex B stream (MPEG-TS), the parameter sets when that picture has none.

`exact`: decodes and re-encodes (H.264 via PyAV's libx264, AAC audio) from the frame on screen
at the start to the last frame before the end, frame-accurately, with the source's own frame
times (variable frame rate stays variable).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cliptool.errors import CliptoolError, UsageError, VideoError, one_line, printable
from cliptool.writers.files import safe_stem, time_tag

if TYPE_CHECKING:
    from cliptool.search.searcher import Hit

_EPS = 1e-4
# Containers that take whatever a stream copy brings; others keep their own suffix.
_COPY_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".m2ts", ".mts", ".mpg", ".mpeg",
                  ".flv", ".3gp", ".3g2", ".ogv", ".wmv", ".asf", ".vob", ".mxf"}
_EXACT_TB = Fraction(1, 90000)


@dataclass
class ClipResult:
    rank: int
    file: str  # name inside the output folder
    path: str  # the source video
    mode: str  # "copy" or "exact"
    start: float  # the hit's span
    end: float
    clip_start: float  # where the clip really starts and ends, in the source's time
    clip_end: float
    duration: float
    frames: int
    score: float
    best_time: float
    scene_id: str
    video_id: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = printable(self.path)
        return d


def clip_names(hits: Sequence[Hit], exact: bool) -> list[str]:
    """01_park_00-01-02.480.mp4, ...: rank, the video's name, the span's start."""
    width = max(2, len(str(len(hits))))
    names = []
    for h in hits:
        suffix = Path(h.path).suffix.lower()
        suffix = ".mp4" if exact or suffix not in _COPY_SUFFIXES else suffix
        names.append(f"{h.rank:0{width}d}_{safe_stem(h.path)}_{time_tag(h.start)}{suffix}")
    return names


def check_output_dir(output: Path) -> Path:
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise UsageError(f"not a folder: {printable(str(output))}")
    if not output.exists():
        if not output.parent.is_dir():
            raise UsageError(f"output folder's parent does not exist: {printable(str(output.parent))}")
        try:
            output.mkdir()
        except OSError as exc:
            raise UsageError(f"cannot create {printable(str(output))}: {exc.strerror or exc}") from None
    return output


def _open(path: Path) -> Any:
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{printable(str(path))}: cannot open video ({one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{printable(str(path))}: no video stream")
    return container


def _find_key_packet(container: Any, vs: Any, start: float) -> tuple[int, int]:
    """(pts, dts) of the last key frame whose presentation time is at or before `start`."""
    base = vs.start_time or 0
    tb = float(vs.time_base)

    def scan() -> tuple[int, int] | None:
        best = None
        for packet in container.demux(vs):
            if packet.pts is None and packet.dts is None:
                continue  # the flush packet
            pts = packet.pts if packet.pts is not None else packet.dts
            dts = packet.dts if packet.dts is not None else pts
            if (dts - base) * tb > start + _EPS:
                break  # later packets are decoded later, so shown later: no earlier key frame
            if packet.is_keyframe and (pts - base) * tb <= start + _EPS:
                best = (pts, dts)
        return best

    container.seek(base + int(start / tb), stream=vs, backward=True, any_frame=False)
    found = scan()
    if found is None:  # the seek landed after start (a bad index): from the beginning
        container.seek(base, stream=vs, backward=True, any_frame=False)
        found = scan()
    if found is None:
        raise VideoError("no key frame at or before the start")
    return found


def _nal_units(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of an H.264 packet: length-prefixed (avcC, `length_size` bytes) or, with
    length_size 0, Annex B (start codes)."""
    units: list[bytes] = []
    if length_size:
        i = 0
        while i + length_size <= len(data):
            size = int.from_bytes(data[i:i + length_size], "big")
            units.append(data[i + length_size:i + length_size + size])
            i += length_size + size
        return [u for u in units if u]
    for part in data.split(b"\x00\x00\x01"):  # a unit never ends in a zero byte: those are the next start code's
        part = part.rstrip(b"\x00")
        if part:
            units.append(part)
    return units


def _join_nal_units(units: list[bytes], length_size: int) -> bytes:
    if length_size:
        return b"".join(len(u).to_bytes(length_size, "big") + u for u in units)
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)


def _h264_layout(vs: Any) -> int | None:
    """The NAL length size of an H.264 stream (0: Annex B); None for other codecs."""
    if vs.codec_context.name != "h264":
        return None
    extradata = bytes(vs.codec_context.extradata or b"")
    return (extradata[4] & 3) + 1 if len(extradata) > 4 and extradata[0] == 1 else 0


def _opening_units(container: Any, vs: Any, length_size: int) -> list[bytes]:
    """What the first picture of an H.264 stream tells a decoder beyond itself: the x264 version
    SEI and, in Annex B, the parameter sets (from the stream's extradata when not in-band).
    `container` is just opened (a seek to the start can land later in some containers)."""
    first = next((p for p in container.demux(vs) if p.pts is not None or p.dts is not None), None)
    units = _nal_units(bytes(first), length_size) if first is not None else []
    sei = [u for u in units if u[0] & 0x1F == 6 and b"x264 - core " in u]
    if length_size:
        return sei
    params = [u for u in units if u[0] & 0x1F in (7, 8)]
    if not params:
        params = [u for u in _nal_units(bytes(vs.codec_context.extradata or b""), 0) if u[0] & 0x1F in (7, 8)]
    return params + sei


def _with_opening(packet: Any, opening: list[bytes], length_size: int) -> Any:
    """The clip's first packet with the opening units it lacks, before its first slice."""
    import av

    units = _nal_units(bytes(packet), length_size)
    have_params = any(u[0] & 0x1F == 7 for u in units)
    have_sei = any(u[0] & 0x1F == 6 and b"x264 - core " in u for u in units)
    missing = [u for u in opening if (u[0] & 0x1F == 6 and not have_sei) or (u[0] & 0x1F in (7, 8) and not have_params)]
    if not missing:
        return packet
    at = next((k for k, u in enumerate(units) if 1 <= u[0] & 0x1F <= 5), len(units))
    out = av.Packet(_join_nal_units(units[:at] + missing + units[at:], length_size))
    out.pts, out.dts, out.duration, out.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    out.is_keyframe = packet.is_keyframe
    return out


def copy_span(source: Path, output: Path, start: float, end: float) -> tuple[float, float, int]:
    """Stream-copies [key frame at or before start, end) into `output`; (clip start, clip end,
    video frames) in the source's time."""
    import av

    src = _open(source)
    try:
        vs = src.streams.video[0]
        audio = src.streams.audio[0] if src.streams.audio else None
        base = vs.start_time or 0
        vtb = vs.time_base
        layout = _h264_layout(vs)
        opening = _opening_units(src, vs, layout) if layout is not None else []
        key_pts, key_dts = _find_key_packet(src, vs, start)
        t0 = (key_pts - base) * vtb  # exact Fraction: the clip's zero in the source's time
        out = av.open(str(output), mode="w")
        try:
            ovs = out.add_stream_from_template(vs)
            oas = None
            if audio is not None:
                try:
                    oas = out.add_stream_from_template(audio)
                except (av.FFmpegError, ValueError):
                    oas = None
            abase = (audio.start_time or 0) if audio is not None else 0
            src.seek(key_dts, stream=vs, backward=True, any_frame=False)  # by pts, MPEG-TS lands past it
            streams = [vs] + ([audio] if oas is not None else [])
            frames, last_end, started, video_done = 0, float(t0), False, False
            shift_v = key_pts  # the key frame shows at 0
            for packet in src.demux(*streams):
                if packet.pts is None and packet.dts is None:
                    continue
                if packet.stream is vs:
                    if video_done:
                        if oas is None:
                            break
                        continue
                    dts = packet.dts if packet.dts is not None else packet.pts
                    if not started:
                        if dts < key_dts:
                            continue
                        if dts != key_dts:  # the seek went past the key frame: re-encode instead
                            raise VideoError("cannot seek to the key frame")
                        started = True
                    if (dts - base) * vtb >= end - _EPS:
                        video_done = True
                        continue
                    pts = packet.pts if packet.pts is not None else dts
                    shown = (pts - base) * vtb + (packet.duration or 0) * vtb
                    last_end = max(last_end, float(shown))
                    if frames == 0 and opening:
                        packet = _with_opening(packet, opening, layout or 0)
                    packet.pts = pts - shift_v
                    packet.dts = dts - shift_v
                    packet.stream = ovs
                    out.mux(packet)
                    frames += 1
                else:
                    atb = audio.time_base
                    pts = packet.pts if packet.pts is not None else packet.dts
                    at = (pts - abase) * atb
                    if at < t0 - Fraction(1, 1000):
                        continue
                    if at >= max(end, last_end):  # as far as the video goes
                        if video_done:
                            break
                        continue
                    shift_a = int(round((t0 + abase * atb) / atb))
                    packet.pts = pts - shift_a
                    packet.dts = (packet.dts if packet.dts is not None else pts) - shift_a
                    packet.stream = oas
                    out.mux(packet)
        finally:
            out.close()
        if frames == 0:
            raise VideoError("no video packets in the span")
        return float(t0), last_end, frames
    except av.FFmpegError as exc:
        raise VideoError(f"{printable(str(source))}: cannot copy ({one_line(exc)})") from None
    finally:
        src.close()


def encode_span(source: Path, output: Path, start: float, end: float, crf: int = 18) -> tuple[float, float, int]:
    """Re-encodes [start, end) frame-accurately as H.264 (and AAC); (first frame's time, end, frames)."""
    import av

    from cliptool.media.decode import VideoReader

    out = av.open(str(output), mode="w")
    try:
        with VideoReader(source) as reader:
            info = reader.info
            rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
            ovs = out.add_stream("libx264", rate=rate)
            ovs.width, ovs.height = max(2, info.width - info.width % 2), max(2, info.height - info.height % 2)
            ovs.pix_fmt = "yuv420p"
            ovs.codec_context.time_base = _EXACT_TB
            ovs.options = {"crf": str(crf), "preset": "veryfast"}
            audio_in = _open(source)
            try:
                ain = audio_in.streams.audio[0] if audio_in.streams.audio else None
                oas = None
                if ain is not None and ain.codec_context.sample_rate:
                    oas = out.add_stream("aac", rate=ain.codec_context.sample_rate)
                    oas.layout = "mono" if ain.codec_context.channels == 1 else "stereo"
                first: float | None = None
                last, frames, last_pts = start, 0, -1
                step = 1.0 / info.fps if info.fps > 0 else 0.04
                for frame in reader.frames_from(start):
                    if frame.time >= end - _EPS and frames:
                        break
                    if first is None:
                        first = frame.time
                    vf = frame.av_frame.reformat(width=ovs.width, height=ovs.height, format="yuv420p")
                    pts = int(round((frame.time - first) / _EXACT_TB))
                    if frames and pts <= last_pts:  # broken or repeated timestamps: keep them increasing
                        pts = last_pts + 1
                    vf.pts = last_pts = pts
                    vf.time_base = _EXACT_TB
                    for packet in ovs.encode(vf):
                        out.mux(packet)
                    last, frames = frame.time, frames + 1
                for packet in ovs.encode(None):
                    out.mux(packet)
                if first is None:
                    raise VideoError("no frames in the span")
                if oas is not None:
                    _encode_audio(audio_in, ain, out, oas, first, end)
            finally:
                audio_in.close()
        return first, min(end, last + step), frames
    except av.FFmpegError as exc:
        raise VideoError(f"{printable(str(source))}: cannot encode ({one_line(exc)})") from exc
    finally:
        out.close()


def _encode_audio(container: Any, ain: Any, out: Any, oas: Any, t0: float, end: float) -> None:
    """The audio of [t0, end) of `ain` as AAC into `oas`, its first sample at the clip's zero."""
    import av

    base = ain.start_time or 0
    tb = float(ain.time_base)
    rate = oas.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=oas.codec_context.layout, rate=rate)
    fifo = av.AudioFifo()
    container.seek(base + int(max(0.0, t0 - 1.0) / tb), stream=ain, backward=True)
    wanted_from, wanted_to = int(round(t0 * rate)), int(round(end * rate))
    written = 0
    try:
        for frame in container.decode(ain):
            if frame.pts is None:
                continue
            at = (frame.pts - base) * tb
            if at >= end:
                break
            for rf in resampler.resample(frame):
                first = int(round(at * rate))
                skip = max(0, wanted_from - first)
                if skip >= rf.samples:
                    continue
                if skip or first + rf.samples > wanted_to:
                    import numpy as np

                    data = rf.to_ndarray()[:, skip: max(skip, wanted_to - first)]
                    if data.shape[1] == 0:
                        continue
                    rf = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp",
                                                    layout=oas.codec_context.layout)
                    rf.sample_rate = rate
                rf.pts = None
                fifo.write(rf)
    except av.FFmpegError:
        pass  # a broken audio tail: keep what was decoded
    size = oas.codec_context.frame_size or 1024
    while fifo.samples:
        chunk = fifo.read(min(size, fifo.samples))
        chunk.pts = written
        chunk.time_base = Fraction(1, rate)
        written += chunk.samples
        for packet in oas.encode(chunk):
            out.mux(packet)
    for packet in oas.encode(None):
        out.mux(packet)


def write_clips(hits: Sequence[Hit], output: Path, *, exact: bool = False, query: str | None = None,
                image: str | None = None, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Writes each hit's span into `output` (created if missing) and manifest.json; returns the
    manifest. A hit that cannot be cut is reported, listed under "failed" and skipped."""
    output = check_output_dir(output)
    results: list[ClipResult] = []
    failed: list[dict[str, Any]] = []
    for hit, name in zip(hits, clip_names(hits, exact)):
        target = output / name
        tmp = output / f".{name}.{os.getpid()}.part{target.suffix}"
        mode, note = ("exact" if exact else "copy"), None
        try:
            try:
                if exact:
                    first, last, frames = encode_span(Path(hit.path), tmp, hit.start, hit.end)
                else:
                    first, last, frames = copy_span(Path(hit.path), tmp, hit.start, hit.end)
            except VideoError as exc:
                if exact:
                    raise
                # a stream this container cannot copy (or a broken index): re-encode it instead
                tmp.unlink(missing_ok=True)
                mode, note = "exact", f"re-encoded: stream copy failed ({exc})"
                if report is not None:
                    report(f"clip for #{hit.rank} {printable(hit.path)} {note}")
                target = target.with_suffix(".mp4")
                name = target.name
                tmp = tmp.with_suffix(".mp4")
                first, last, frames = encode_span(Path(hit.path), tmp, hit.start, hit.end)
            tmp.replace(target)
        except (CliptoolError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            message = str(exc) if isinstance(exc, CliptoolError) else (exc.strerror or str(exc))
            failed.append({"rank": hit.rank, "path": printable(hit.path), "error": printable(message)})
            if report is not None:
                report(f"no clip for #{hit.rank} {printable(hit.path)}: {printable(message)}")
            continue
        results.append(ClipResult(hit.rank, name, hit.path, mode, hit.start, hit.end, round(first, 6),
                                  round(last, 6), round(last - first, 6), frames, round(hit.score, 6),
                                  hit.best_time, hit.scene_id, hit.video_id, note))
    manifest = {"query": query, "image": image, "mode": "exact" if exact else "copy",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "clips": [r.to_dict() for r in results], "failed": failed}
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest
