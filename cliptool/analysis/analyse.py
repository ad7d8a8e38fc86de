"""Stages 2-5 for one video in one sequential decode pass: decode, detect, sample, embed.

`index` and `keyframes` both run on this pass. Index embeds each scene's sample frames;
keyframes also hands it a `FrameTap`, which takes extra frames (its candidates) and sees every
taken frame and sample in RGB, and may give it the scenes already known from an index
(`KnownScenes`), whose sample vectors are then not computed again.
"""

from __future__ import annotations

import bisect
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cliptool.config import IndexOptions
from cliptool.media.decode import Frame, VideoInfo, VideoReader, detect_bgr, to_rgb
from cliptool.analysis.detect import make_detector
from cliptool.models.clip import ClipModel
from cliptool.models.views import whole
from cliptool.errors import ModelUnavailableError
from cliptool.analysis.sample import ChangeSampler, ClosedScene, KnownCutter, SceneCutter
from cliptool.store import SceneRecord, SceneVectors
from cliptool.analysis.thumbnails import encode as thumbnail_jpeg


@dataclass
class AnalysedVideo:
    """What one decode pass of a video produced, before it is stored."""

    info: VideoInfo
    frame_count: int
    duration: float
    scenes: list[SceneRecord]
    vectors: list[SceneVectors]
    continues_shot: list[bool] = field(default_factory=list)  # per scene: a window after the first of its shot
    frame_vectors: dict[int, np.ndarray] = field(default_factory=dict)  # every embedded frame, by frame number
    thumbnails: list[list[bytes]] = field(default_factory=list)  # per scene: a small JPEG per sample (none with a tap)


class FrameTap(Protocol):
    """Frames an analysis pass takes instead of the scenes' samples (keyframes' candidates)."""

    def wants(self, frame: Frame) -> bool:
        """Called for every frame in decode order: take it?"""

    def picture(self, frame: Frame, rgb: np.ndarray) -> bool:
        """Called once for each taken frame and each sample whose vector is known, in the
        embedding thread; returns whether to embed it."""


@dataclass
class KnownScenes:
    """Scenes and sample vectors an index already holds for the video."""

    scenes: list[SceneRecord]
    vectors: dict[int, np.ndarray]  # sample frame number -> vector


class _Embedder:
    """Embeds frames in a background thread while decoding goes on.

    The decode loop hands over frames (still undecoded to RGB): each closed scene's samples and
    the tap's frames. The worker converts and preprocesses them, and runs the model on each
    `batch_size` inputs in frame order (the rest at the end), so the batches, and with them the
    vectors, are the same on every run: the int8 tower quantises a batch's activations together,
    so a frame's vector depends slightly on its batch mates (cosine 0.999 between batchings).
    torch, cv2 and PyAV's
    conversion release the GIL, so decoding and embedding overlap on separate cores. The
    hand-over queue is bounded in bytes of held frames, which keeps memory flat when the model
    is slower than the decoder. Vectors are kept by frame number; a frame is embedded once.
    """

    _HELD_BYTES = 192 << 20

    def __init__(self, model: ClipModel, batch_size: int, frame_bytes: int, tap: FrameTap | None,
                 known: dict[int, np.ndarray], views: str = "squeeze") -> None:
        self.model = model
        self.views = views
        self.batch_size = max(1, batch_size)
        self.tap = tap
        self.known = known
        self.vectors: dict[int, list[np.ndarray]] = {}  # frame number -> its views' vectors
        self.thumbnails: dict[int, bytes] = {}  # sample frame number -> small JPEG (without a tap)
        self._shown: set[int] = set()  # frames the tap has seen
        self._queued: set[int] = set()  # frames embedded or waiting in the batch
        self._queue: queue.Queue = queue.Queue(maxsize=max(8, self._HELD_BYTES // max(1, 3 * frame_bytes)))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliptool-embed", daemon=True)
        self._thread.start()

    def add(self, frames: list[Frame], samples: bool) -> None:
        """Queues frames (blocks while the worker is far behind)."""
        self._put((frames, samples))

    def _put(self, item: tuple[list[Frame], bool] | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> dict[int, np.ndarray]:
        """Waits for every queued frame to be embedded; returns by frame number its views'
        vectors, (views, D)."""
        self._put(None)  # end marker
        self._thread.join()
        if self._error is not None:
            raise self._error
        return {i: np.stack(v) for i, v in self.vectors.items()}

    def abort(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the worker is busy; it sees the stop flag after this item

    def _run(self) -> None:
        inputs: list[np.ndarray] = []
        owners: list[int] = []
        try:
            while not self._stop.is_set():
                item = self._queue.get()
                if item is None:
                    break
                frames, samples = item
                for frame in frames:
                    self._take(frame, samples, inputs, owners)
                frames = frame = item = None  # let the decoder reuse their buffers
                while len(inputs) >= self.batch_size:
                    self._flush(inputs, owners)
            self._flush(inputs, owners)
        except ModelUnavailableError as exc:
            # The model's (background) load failed: not this video's fault, so an OSError, which
            # the indexer does not remember against the file; the run then ends with `exc`.
            self._error = ModelLoadError(str(exc))
        except BaseException as exc:  # handed to the decode loop, which raises it
            self._error = exc

    def _take(self, frame: Frame, sample: bool, inputs: list[np.ndarray], owners: list[int]) -> None:
        rgb = None
        embed = sample
        if self.tap is not None:  # the tap's frames and the known samples, each shown once
            if (sample and frame.index not in self.known) or frame.index in self._shown:
                return
            self._shown.add(frame.index)
            rgb = to_rgb(frame.av_frame)
            embed = self.tap.picture(frame, rgb)
        if not embed or frame.index in self._queued or frame.index in self.known:
            return
        self._queued.add(frame.index)
        if rgb is None:
            rgb = to_rgb(frame.av_frame)
        if sample and self.tap is None:  # the web app's picture of it, from the RGB already made
            self.thumbnails[frame.index] = thumbnail_jpeg(rgb)
        for view in self.model.preprocess_views(rgb, self.views):
            inputs.append(view)
            owners.append(frame.index)

    def _flush(self, inputs: list[np.ndarray], owners: list[int]) -> None:
        """Embeds the first `batch_size` inputs (all of them at the end)."""
        if not inputs:
            return
        n = min(len(inputs), self.batch_size)
        vectors = self.model.encode_preprocessed(np.stack(inputs[:n]))
        for owner, vec in zip(owners[:n], vectors):
            self.vectors.setdefault(owner, []).append(vec)
        del inputs[:n], owners[:n]


def analyse_video(
    path: Path, model: ClipModel, options: IndexOptions, on_frame: Callable[[float], None] | None = None,
    tap: FrameTap | None = None, known: KnownScenes | None = None, watch: Callable[[Frame], None] | None = None,
) -> AnalysedVideo:
    """One sequential decode pass: detect shots, pick sample frames, embed them.

    With `tap`, its frames are taken and embedded instead of the samples (see `FrameTap`), a
    scene's vector is the mean of those inside it (empty when there are none), and every frame
    is decoded fully, since the tap's pictures are for people. Without it, non-reference frames
    are decoded without deblocking except at fp32, the exact path (embeddings' cosine to fully
    decoded frames' is 0.99999 or more). With `known`, its scenes replace the detector and the
    windows, and its sample vectors are used as they are. `watch` sees every decoded frame, in
    order (the screen text reader takes some).
    """
    skip_deblocking = tap is None and model.precision != "fp32"
    with VideoReader(path, skip_deblocking=skip_deblocking) as reader, _DecodeAhead(reader.frames()) as frames:
        info = reader.info
        frame_bytes = info.width * info.height * 3 // 2
        detector = None
        changes: ChangeSampler | None = None
        cutter: SceneCutter | KnownCutter
        if known is None:
            detector = make_detector(options.detector, options.threshold, options.min_scene_frames,
                                     options.detect_width)
            size = detector.frame_size(max(2, info.width), max(2, info.height))
            cutter = SceneCutter(options.max_scene_seconds, options.samples_per_scene, frame_bytes)
            if options.change_threshold > 0:
                changes = ChangeSampler(options.change_threshold, options.change_min_gap, options.change_mean_gap,
                                        options.change_burst, whole=options.views != "centre")
        else:
            cutter = KnownCutter(known.scenes)
        embedder = _Embedder(model, options.batch_size, frame_bytes, tap, known.vectors if known else {},
                             options.views)
        closed: list[ClosedScene] = []

        def take(scenes: list[ClosedScene]) -> None:
            for scene in scenes:
                embedder.add(scene.samples, samples=True)
                scene.samples = [Frame(f.index, f.time, None) for f in scene.samples]
                closed.append(scene)

        last_time, last_step, count = 0.0, 0.0, 0
        try:
            for frame in frames:
                take(cutter.add_frame(frame))
                if detector is not None:
                    small = detect_bgr(frame.av_frame, size)
                    take(cutter.add_cuts(detector.push(frame.index, small)))
                    if changes is not None and changes.offer(frame.time, small):
                        cutter.add_extra(frame)  # type: ignore[union-attr]
                if tap is not None and tap.wants(frame):
                    embedder.add([frame], samples=False)
                if watch is not None:
                    watch(frame)
                last_step = frame.time - last_time if count else 0.0
                last_time = frame.time
                count += 1
                if on_frame is not None:
                    on_frame(frame.time)
            if detector is not None:
                take(cutter.add_cuts(detector.flush()))
            end_time = last_time + _frame_duration(last_step, info.fps)
            take(cutter.finish(end_time))
            frame_vectors = embedder.finish()
        except BaseException:
            embedder.abort()
            raise
    out = _assemble(info, count, end_time, closed, frame_vectors, known.vectors if known else {}, tap is not None)
    if tap is None and embedder.thumbnails:
        out.thumbnails = [[embedder.thumbnails.get(f, b"") for f in scene.sample_frames] for scene in out.scenes]
    return out


def _assemble(info: VideoInfo, frame_count: int, end_time: float, closed: list[ClosedScene],
              frame_vectors: dict[int, np.ndarray], known: dict[int, np.ndarray], tapped: bool) -> AnalysedVideo:
    """Scene records and vectors (a scene's vector: the normalised mean of its frames')."""
    out = AnalysedVideo(info, frame_count, end_time, [], [], [], {i: whole(v) for i, v in frame_vectors.items()})
    every = {**{i: np.atleast_2d(v) for i, v in known.items()}, **frame_vectors}  # frame -> (views, D)
    numbers = sorted(every)
    for scene in closed:
        if tapped:
            lo, hi = bisect.bisect_left(numbers, scene.start_frame), bisect.bisect_left(numbers, scene.end_frame)
            vecs = [every[i] for i in numbers[lo:hi]]
        else:
            vecs = [every[f.index] for f in scene.samples]
            if not vecs:
                continue
        if tapped:  # the tap's pictures: one vector each, the whole picture's
            vecs = [whole(v)[None] for v in vecs]
        frame_vecs = np.concatenate(vecs).astype(np.float32) if vecs else np.zeros((0, 0), np.float32)
        mean = frame_vecs.mean(axis=0) if vecs else np.zeros(0, np.float32)
        out.scenes.append(SceneRecord(
            index=len(out.scenes),
            start_time=round(scene.start_time, 6),
            end_time=round(scene.end_time, 6),
            start_frame=scene.start_frame,
            end_frame=scene.end_frame,
            sample_times=[round(s.time, 6) for s in scene.samples],
            sample_frames=[s.index for s in scene.samples],
            continues_shot=scene.continues_shot,
        ))
        out.vectors.append(SceneVectors(mean / max(float(np.linalg.norm(mean)), 1e-12), frame_vecs))
        out.continues_shot.append(scene.continues_shot)
    return out


class _DecodeAhead:
    """Decodes in a thread of its own, a few frames ahead of the detection loop.

    Decoding and detection then overlap instead of taking turns: the decoder's frame threads
    no longer wait for the loop to hand them the next packet. PyAV releases the GIL while it
    decodes. Use as a context manager: leaving it stops and joins the thread, so the reader
    is never closed under it.
    """

    _DEPTH = 8
    _DONE = object()

    def __init__(self, frames: Iterator[Frame]) -> None:
        self._frames = frames
        self._queue: queue.Queue = queue.Queue(maxsize=self._DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliptool-decode", daemon=True)

    def __enter__(self) -> _DecodeAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room for a producer blocked on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._frames:
                if not self._put(frame):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # raised in the detection loop
            self._put(exc)
        finally:
            self._frames.close()  # type: ignore[attr-defined]


class ModelLoadError(OSError):
    """The model could not be loaded while a video was being analysed."""


def _frame_duration(last_step: float, fps: float) -> float:
    if last_step > 0:
        return last_step
    return 1.0 / fps if fps > 0 else 0.0
