"""Stages 2-5 for one video in one sequential decode pass: decode, detect, sample, embed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import IndexOptions
from .decode import Frame, VideoInfo, VideoReader, detect_bgr, to_rgb
from .detect import make_detector
from .embed import ClipModel
from .errors import ModelUnavailableError
from .sample import ClosedScene, SceneCutter
from .store import SceneRecord, SceneVectors


@dataclass
class AnalysedVideo:
    """What one decode pass of a video produced, before it is stored."""

    info: VideoInfo
    frame_count: int
    duration: float
    scenes: list[SceneRecord]
    vectors: list[SceneVectors]


class _Embedder:
    """Embeds the sample frames of closed scenes in a background thread while decoding goes on.

    The decode loop hands over each closed scene's sample frames (still undecoded to RGB); the
    worker converts and preprocesses them, and runs the model on a batch when it has
    `batch_size` inputs, or a smaller one when nothing else is waiting (so it never sits idle,
    and little is left to embed when decoding ends). torch, cv2 and PyAV's conversion release
    the GIL, so decoding and embedding overlap on separate cores. The hand-over queue is bounded
    in bytes of held frames, which keeps memory flat when the model is slower than the decoder.
    """

    _MIN_BATCH = 8
    _HELD_BYTES = 192 << 20

    def __init__(self, model: ClipModel, batch_size: int, frame_bytes: int) -> None:
        import queue
        import threading

        self.model = model
        self.batch_size = max(1, batch_size)
        self.frame_vectors: dict[int, list[np.ndarray]] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max(8, self._HELD_BYTES // max(1, 3 * frame_bytes)))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliptool-embed", daemon=True)
        self._thread.start()

    def add(self, scene_no: int, scene: ClosedScene) -> None:
        """Queues a scene's sample frames (blocks while the worker is far behind)."""
        import queue

        item = (scene_no, [f.av_frame for f in scene.samples])
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> dict[int, list[np.ndarray]]:
        """Waits for every queued scene to be embedded; returns vectors by scene number."""
        self.add(-1, ClosedScene(0, 0, 0.0, 0.0))  # end marker
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.frame_vectors

    def abort(self) -> None:
        import queue

        self._stop.set()
        try:
            self._queue.put_nowait((-1, []))
        except queue.Full:
            pass  # the worker is busy; it sees the stop flag after this item

    def _run(self) -> None:
        inputs: list[np.ndarray] = []
        owners: list[int] = []
        try:
            while not self._stop.is_set():
                scene_no, frames = self._queue.get()
                if scene_no < 0:
                    break
                self.frame_vectors[scene_no] = []
                for av_frame in frames:
                    inputs.append(self.model.preprocess(to_rgb(av_frame)))
                    owners.append(scene_no)
                frames = av_frame = None  # let the decoder reuse their buffers
                if len(inputs) >= self.batch_size or (len(inputs) >= self._MIN_BATCH and self._queue.empty()):
                    self._flush(inputs, owners)
            self._flush(inputs, owners)
        except ModelUnavailableError as exc:
            # The model's (background) load failed: not this video's fault, so an OSError, which
            # the indexer does not remember against the file; the run then ends with `exc`.
            self._error = ModelLoadError(str(exc))
        except BaseException as exc:  # handed to the decode loop, which raises it
            self._error = exc

    def _flush(self, inputs: list[np.ndarray], owners: list[int]) -> None:
        if not inputs:
            return
        vectors = self.model.encode_preprocessed(np.stack(inputs))
        for owner, vec in zip(owners, vectors):
            self.frame_vectors[owner].append(vec)
        inputs.clear()
        owners.clear()


def analyse_video(
    path: Path, model: ClipModel, options: IndexOptions, on_frame: Callable[[float], None] | None = None
) -> AnalysedVideo:
    """One sequential decode pass: detect shots, pick sample frames, embed them.

    Non-reference frames are decoded without deblocking except at fp32, the exact path
    (embeddings' cosine to fully decoded frames' is 0.99999 or more).
    """
    with VideoReader(path, skip_deblocking=model.precision != "fp32") as reader, _DecodeAhead(reader.frames()) as frames:
        info = reader.info
        detector = make_detector(options.detector, options.threshold, options.min_scene_frames, options.detect_width)
        size = detector.frame_size(max(2, info.width), max(2, info.height))
        frame_bytes = info.width * info.height * 3 // 2
        cutter = SceneCutter(options.max_scene_seconds, options.samples_per_scene, frame_bytes)
        embedder = _Embedder(model, options.batch_size, frame_bytes)
        closed: list[ClosedScene] = []

        def take(scenes: list[ClosedScene]) -> None:
            for scene in scenes:
                embedder.add(len(closed), scene)
                scene.samples = [_Sample(f.index, f.time) for f in scene.samples]  # type: ignore[misc]
                closed.append(scene)

        last_time, last_step, count = 0.0, 0.0, 0
        try:
            for frame in frames:
                take(cutter.add_frame(frame))
                take(cutter.add_cuts(detector.push(frame.index, detect_bgr(frame.av_frame, size))))
                last_step = frame.time - last_time if count else 0.0
                last_time = frame.time
                count += 1
                if on_frame is not None:
                    on_frame(frame.time)
            take(cutter.add_cuts(detector.flush()))
            frame_step = _frame_duration(last_step, info.fps)
            end_time = last_time + frame_step
            take(cutter.finish(end_time))
            frame_vectors = embedder.finish()
        except BaseException:
            embedder.abort()
            raise

    scenes: list[SceneRecord] = []
    vectors: list[SceneVectors] = []
    for i, scene in enumerate(closed):
        frame_vecs = np.array(frame_vectors[i], dtype=np.float32)
        if len(frame_vecs) == 0:
            continue
        mean = frame_vecs.mean(axis=0)
        scenes.append(SceneRecord(
            index=len(scenes),
            start_time=round(scene.start_time, 6),
            end_time=round(scene.end_time, 6),
            start_frame=scene.start_frame,
            end_frame=scene.end_frame,
            sample_times=[round(s.time, 6) for s in scene.samples],
            sample_frames=[s.index for s in scene.samples],
        ))
        vectors.append(SceneVectors(mean / max(float(np.linalg.norm(mean)), 1e-12), frame_vecs))
    return AnalysedVideo(info, count, end_time, scenes, vectors)


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
        import queue
        import threading

        self._frames = frames
        self._queue: queue.Queue = queue.Queue(maxsize=self._DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliptool-decode", daemon=True)

    def __enter__(self) -> _DecodeAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import queue

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
        import queue

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


@dataclass
class _Sample:
    index: int
    time: float


def _frame_duration(last_step: float, fps: float) -> float:
    if last_step > 0:
        return last_step
    return 1.0 / fps if fps > 0 else 0.0
