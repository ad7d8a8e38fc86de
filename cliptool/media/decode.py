"""Stage 2: one sequential decode pass with true presentation times, plus frame access by time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from cliptool.errors import UsageError, VideoError, one_line

_PLANAR_420 = {"yuv420p", "yuvj420p"}
_TIME_EPS = 1e-4


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video before decoding it."""

    path: Path
    width: int
    height: int
    fps: float  # average frame rate; times never come from it
    duration: float  # seconds, container's estimate
    codec: str


@dataclass
class Frame:
    """A decoded frame: its index in decode order and its presentation time in seconds."""

    index: int
    time: float
    av_frame: Any  # av.VideoFrame, full resolution, not yet converted


def _error(path: Path, exc: BaseException) -> VideoError:
    strerror = getattr(exc, "strerror", None)  # FFmpeg's words, without errno and file name
    text = one_line(exc, strerror if isinstance(strerror, str) and strerror.strip() else None)
    return VideoError(f"{path}: cannot decode video ({text})")


class VideoReader:
    """Opens a video file for sequential decoding. Use as a context manager."""

    def __init__(self, path: Path, threads: int = 0, skip_deblocking: bool = False) -> None:
        """`skip_deblocking` skips the deblocking filter on frames that no other frame predicts
        from (H.264's non-reference frames), so the error cannot spread: 5-9% less decoding CPU,
        pictures within half a level of 255. Skipping it on every frame would save 18-27% but
        drifts until the next key frame (3 levels on a low-bitrate 720p clip). For analysis
        (shot detection, embedding), not for pictures a user sees."""
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise _error(self.path, exc) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if skip_deblocking:
            self._stream.codec_context.options = {"skip_loop_filter": "noref"}
        if threads:
            self._stream.thread_count = threads
        self.info = self._read_info()
        self._base_pts: int | None = self._stream.start_time
        self._primed = False  # has the decoder seen the stream's first frame?

    def _read_info(self) -> VideoInfo:
        s = self._stream
        cc = s.codec_context
        fps = float(s.average_rate or s.guessed_rate or 0.0) if (s.average_rate or s.guessed_rate) else 0.0
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        else:
            duration = 0.0
        return VideoInfo(
            path=self.path,
            width=int(cc.width or 0),
            height=int(cc.height or 0),
            fps=fps,
            duration=duration,
            codec=cc.name or "",
        )

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _time_of(self, frame: Any, previous: float | None) -> float:
        pts = frame.pts
        if pts is None:
            step = 1.0 / self.info.fps if self.info.fps > 0 else 0.04
            return 0.0 if previous is None else previous + step
        if self._base_pts is None:
            self._base_pts = pts
        return float((pts - self._base_pts) * self._stream.time_base)

    def frames(self) -> Iterator[Frame]:
        """Every frame in presentation order, with times relative to the stream's start.

        A stream that breaks off after some frames ends there; one that yields no frame
        raises VideoError.
        """
        index = 0
        previous: float | None = None
        try:
            for frame in self._container.decode(self._stream):
                self._primed = True
                t = self._time_of(frame, previous)
                if previous is not None and t <= previous:
                    # Broken or duplicated timestamps: keep times increasing.
                    t = previous + _TIME_EPS
                previous = t
                yield Frame(index, t, frame)
                index += 1
        except (av.FFmpegError, OSError, ValueError) as exc:
            if index == 0:
                raise _error(self.path, exc) from None
        if index == 0:
            raise VideoError(f"{self.path}: no decodable frames")

    def _prime(self) -> None:
        """Decodes the stream's first frame once before the first seek.

        Some decoders learn from the first key frame how to read the rest: FFmpeg's H.264
        decoder takes the x264 version from its SEI message and works around that encoder's
        old bugs (4:4:4 streams from x264 before build 151 decode green without it). A seek
        past that frame would decode every later key frame wrongly.
        """
        if self._primed:
            return
        self._primed = True
        try:
            next(self._container.decode(self._stream), None)
        except (av.FFmpegError, OSError, ValueError):
            pass  # an undecodable first frame teaches the decoder nothing; seek anyway

    def seek(self, t: float) -> None:
        """Positions decoding at the key frame at or before time `t`."""
        self._prime()
        base = self._base_pts or 0
        target = base + int(max(0.0, t) / float(self._stream.time_base))
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise _error(self.path, exc) from None

    def frames_from(self, t: float) -> Iterator[Frame]:
        """Frames from the one on screen at time `t` onwards (indices count from the seek point)."""
        self.seek(t)
        frames = self._frames_after_seek()
        first = next(frames, None)
        if first is not None and first.time > t + _TIME_EPS and t > 0:
            # The seek landed past t (a bad or missing index): decode from the start instead.
            self._container.seek(0)
            frames = self._frames_after_seek()
            first = next(frames, None)
        if first is None:
            return
        previous = first
        for frame in frames:
            if frame.time > t + _TIME_EPS:
                yield previous
                yield frame
                yield from frames
                return
            previous = frame
        yield previous

    def _frames_after_seek(self) -> Iterator[Frame]:
        previous: float | None = None
        try:
            for i, frame in enumerate(self._container.decode(self._stream)):
                t = self._time_of(frame, previous)
                previous = t
                yield Frame(i, t, frame)
        except (av.FFmpegError, OSError, ValueError) as exc:
            if previous is None:
                raise _error(self.path, exc) from None


def rotation_of(frame: Any) -> int:
    """Clockwise degrees to rotate a frame for display, from its display matrix."""
    try:
        ccw = int(round(frame.rotation or 0))
    except (AttributeError, ValueError, TypeError):
        return 0
    return (-ccw) % 360 // 90 * 90


_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def to_rgb(frame: Any) -> np.ndarray:
    """The frame at full resolution as an HxWx3 uint8 RGB array, upright for display."""
    rgb = frame.to_ndarray(format="rgb24")
    rot = rotation_of(frame)
    return cv2.rotate(rgb, _ROTATE[rot]) if rot else rgb


def _plane(frame: Any, i: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[i]
    buf = np.frombuffer(plane, dtype=np.uint8)
    return buf[: plane.line_size * height].reshape(height, plane.line_size)[:, :width]


def small_bgr(frame: Any, size: tuple[int, int]) -> np.ndarray:
    """A small BGR copy of the frame for shot detection.

    For 4:2:0 frames it reads the Y/U/V planes in place, thins them by slicing and converts
    only the small result, which costs a fraction of a full-frame colour conversion.
    """
    tw, th = size
    w, h = frame.width, frame.height
    if frame.format.name not in _PLANAR_420 or w < 2 or h < 2:
        return frame.reformat(width=tw, height=th, format="bgr24").to_ndarray()
    step = max(1, min(w // (2 * tw), h // (2 * th)))
    cstep = max(1, step // 2)
    y = _plane(frame, 0, w, h)[::step, ::step]
    u = _plane(frame, 1, (w + 1) // 2, (h + 1) // 2)[::cstep, ::cstep]
    v = _plane(frame, 2, (w + 1) // 2, (h + 1) // 2)[::cstep, ::cstep]
    yuv = cv2.merge([area_resize(np.ascontiguousarray(p), tw, th) for p in (y, u, v)])
    full_range = frame.format.name == "yuvj420p" or frame.color_range == 2
    matrix = _YUV_TO_BGR_FULL if full_range else _YUV_TO_BGR_LIMITED
    # Round, not truncate: truncation turns white into (255, 255, 254), which has a hue.
    return np.rint(cv2.transform(yuv.astype(np.float32), matrix)).clip(0, 255).astype(np.uint8)


def detect_bgr(frame: Any, size: tuple[int, int]) -> np.ndarray:
    """A small BGR copy of the frame for shot detection, subsampled by plain slicing.

    Like PySceneDetect's own downscaling (every k-th pixel), it reads only the rows it keeps:
    about a fifth of `small_bgr`'s cost. Detectors compare whole frames, so the aliasing this
    allows does not matter to them; use `small_bgr` where pixel statistics do (blur, detail).
    """
    tw, th = size
    w, h = frame.width, frame.height
    step = min(w // tw, h // th) if tw > 0 and th > 0 else 0
    if frame.format.name not in _PLANAR_420 or step < 2:
        return small_bgr(frame, size)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = _plane(frame, 0, w, h)[::step, ::step]
    u = _plane(frame, 1, cw, ch)[::step, ::step]  # chroma rows/columns 0, k, 2k... sit under
    v = _plane(frame, 2, cw, ch)[::step, ::step]  # luma rows/columns 0, 2k, 4k...: half its size
    yh, yw = min(y.shape[0], 2 * u.shape[0]) & ~1, min(y.shape[1], 2 * u.shape[1]) & ~1
    i420 = np.empty((yh * 3 // 2, yw), dtype=np.uint8)
    i420[:yh] = y[:yh, :yw]
    chroma = i420[yh:].reshape(-1)
    quarter = (yh // 2) * (yw // 2)
    chroma[:quarter] = u[: yh // 2, : yw // 2].reshape(-1)
    chroma[quarter:] = v[: yh // 2, : yw // 2].reshape(-1)
    if frame.format.name == "yuvj420p" or frame.color_range == 2:  # full range: to video range
        i420[:yh] = cv2.LUT(i420[:yh], _FULL_TO_VIDEO_LUMA)
        i420[yh:] = cv2.LUT(i420[yh:], _FULL_TO_VIDEO_CHROMA)
    bgr = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)  # BT.601, video range, fixed point
    if (yw, yh) != (tw, th):  # a few percent larger: linear is as good as area here, and cheap
        bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_LINEAR)
    return bgr


_FULL_TO_VIDEO_LUMA = np.rint(16 + np.arange(256) * (219 / 255)).astype(np.uint8)
_FULL_TO_VIDEO_CHROMA = np.rint(128 + (np.arange(256) - 128) * (224 / 255)).astype(np.uint8)


def area_resize(plane: np.ndarray, tw: int, th: int) -> np.ndarray:
    """INTER_AREA downscale of a plane or an image to (tw, th), halving first while it is at
    least twice the target: OpenCV's exact-2x area path is ~20x faster than its general one,
    and the result differs from a one-step area resize by a level or two at most."""
    while plane.shape[1] >= 2 * tw and plane.shape[0] >= 2 * th:
        plane = cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(plane, (tw, th), interpolation=cv2.INTER_AREA)


def _yuv_to_bgr_matrix(full_range: bool) -> np.ndarray:
    """BT.601 Y'CbCr to BGR as a 3x4 affine matrix for cv2.transform."""
    ys, cs, y0 = (1.0, 1.0, 0.0) if full_range else (255 / 219, 255 / 224, 16.0)
    rows = [  # B, G, R from (Y - y0), (U - 128), (V - 128)
        (ys, cs * 1.772, 0.0),
        (ys, -cs * 0.344136, -cs * 0.714136),
        (ys, 0.0, cs * 1.402),
    ]
    m = np.array(rows, dtype=np.float32)
    offset = -(m @ np.array([y0, 128.0, 128.0], dtype=np.float32))
    return np.hstack([m, offset[:, None]]).astype(np.float32)


_YUV_TO_BGR_FULL = _yuv_to_bgr_matrix(True)
_YUV_TO_BGR_LIMITED = _yuv_to_bgr_matrix(False)


def detect_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Size of detection frames: `target_width` wide (never upscaled), aspect kept, even."""
    if width <= target_width or width <= 0:
        return max(2, width), max(2, height)
    return target_width, max(2, int(round(height * target_width / width)))


def frame_at(video: Path, t: float) -> tuple[float, np.ndarray]:
    """(time, RGB) of the frame on screen at time `t` seconds."""
    if t < 0:
        raise UsageError("time must not be negative")
    with VideoReader(video) as reader:
        frames = reader.frames_from(t)
        frame = next(frames, None)
        if frame is None:
            raise UsageError(f"{video}: no frame at {t:.3f} s")
        if next(frames, None) is None:  # the last frame: `t` must fall while it is on screen
            period = 1.0 / reader.info.fps if reader.info.fps > 0 else 0.04
            length = max(frame.time + period, reader.info.duration)
            if t > length + _TIME_EPS:
                from cliptool.media.timecode import format_time

                raise UsageError(f"{video}: {format_time(t)} is past the end of the video "
                                 f"({format_time(length)} long)")
        return frame.time, to_rgb(frame.av_frame)
