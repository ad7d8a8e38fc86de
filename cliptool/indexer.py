"""The indexing pipeline: discover -> decode -> detect -> sample -> embed -> store -> index."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import IndexOptions
from .decode import VideoInfo, VideoReader, small_bgr, to_rgb
from .detect import make_detector
from .discover import discover_videos
from .embed import ClipModel, ModelSpec, _file_fingerprint
from .errors import CliptoolError, IndexMismatchError, NothingToDoError, VideoError
from .sample import ClosedScene, SceneCutter
from .store import IndexStore, SceneRecord, SceneVectors, VideoRecord, WriterLock, video_id_for

Reporter = Callable[[str], None]


@dataclass
class AnalysedVideo:
    """What one decode pass of a video produced, before it is stored."""

    info: VideoInfo
    frame_count: int
    duration: float
    scenes: list[SceneRecord]
    vectors: list[SceneVectors]


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    scenes: int = 0
    seconds: float = 0.0
    video_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "added": self.added, "updated": self.updated, "skipped": self.skipped,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "scenes": self.scenes, "seconds": round(self.seconds, 3),
            "video_seconds": round(self.video_seconds, 3),
        }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class _Embedder:
    """Collects sample frames of closed scenes and embeds them in batches."""

    def __init__(self, model: ClipModel, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self._inputs: list[np.ndarray] = []
        self._owners: list[int] = []  # scene number of each queued input
        self.frame_vectors: dict[int, list[np.ndarray]] = {}

    def add(self, scene_no: int, scene: ClosedScene) -> None:
        self.frame_vectors[scene_no] = []
        for frame in scene.samples:
            self._inputs.append(self.model.preprocess(to_rgb(frame.av_frame)))
            self._owners.append(scene_no)
        if len(self._inputs) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._inputs:
            return
        vectors = self.model.encode_preprocessed(np.stack(self._inputs))
        for owner, vec in zip(self._owners, vectors):
            self.frame_vectors[owner].append(vec)
        self._inputs.clear()
        self._owners.clear()


def analyse_video(
    path: Path, model: ClipModel, options: IndexOptions, on_frame: Callable[[float], None] | None = None
) -> AnalysedVideo:
    """One sequential decode pass: detect shots, pick sample frames, embed them."""
    with VideoReader(path) as reader:
        info = reader.info
        detector = make_detector(options.detector, options.threshold, options.min_scene_frames, options.detect_width)
        size = detector.frame_size(max(2, info.width), max(2, info.height))
        cutter = SceneCutter(options.max_scene_seconds, options.samples_per_scene, info.width * info.height * 3 // 2)
        embedder = _Embedder(model, options.batch_size)
        closed: list[ClosedScene] = []

        def take(scenes: list[ClosedScene]) -> None:
            for scene in scenes:
                embedder.add(len(closed), scene)
                scene.samples = [_Sample(f.index, f.time) for f in scene.samples]  # type: ignore[misc]
                closed.append(scene)

        last_time, last_step, count = 0.0, 0.0, 0
        for frame in reader.frames():
            take(cutter.add_frame(frame))
            take(cutter.add_cuts(detector.push(frame.index, small_bgr(frame.av_frame, size))))
            last_step = frame.time - last_time if count else 0.0
            last_time = frame.time
            count += 1
            if on_frame is not None:
                on_frame(frame.time)
        take(cutter.add_cuts(detector.flush()))
        frame_step = _frame_duration(last_step, info.fps)
        end_time = last_time + frame_step
        take(cutter.finish(end_time))
        embedder.flush()

    scenes: list[SceneRecord] = []
    vectors: list[SceneVectors] = []
    for i, scene in enumerate(closed):
        frame_vecs = np.array(embedder.frame_vectors[i], dtype=np.float32)
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


@dataclass
class _Sample:
    index: int
    time: float


def _frame_duration(last_step: float, fps: float) -> float:
    if last_step > 0:
        return last_step
    return 1.0 / fps if fps > 0 else 0.0


def resolve_model_spec(index_dir: Path, spec: ModelSpec | None) -> ModelSpec:
    """The model to use: the given one, else the one the index was built with, else the default."""
    if spec is not None:
        return spec.resolved()
    store = IndexStore(index_dir)
    if store.exists():
        with store:
            recorded = store.meta().get("model")
        if recorded:
            return ModelSpec(**recorded)
    return ModelSpec().resolved()


def index_paths(
    paths: Iterable[Path],
    index_dir: Path,
    spec: ModelSpec | None = None,
    options: IndexOptions | None = None,
    report: Reporter = _stderr,
    progress: bool | None = None,
) -> IndexSummary:
    """Indexes every video under `paths` into the index at `index_dir`.

    Unchanged videos (same size and mtime, same model) are skipped; a video that cannot be
    decoded is reported and skipped. Each video is committed on its own, so an interruption
    loses at most the one being processed.
    """
    from tqdm import tqdm

    from .vector_index import rebuild

    options = options or IndexOptions()
    started = time.monotonic()
    files = list(discover_videos(paths))
    if not files:
        raise NothingToDoError("no video files found in " + ", ".join(str(p) for p in paths))
    summary = IndexSummary()
    index_dir = Path(index_dir)
    with WriterLock(index_dir):
        spec = resolve_model_spec(index_dir, spec)
        identity = spec.identity()
        with IndexStore(index_dir, create=True) as store:
            store.check_model(identity)
            store.recover()
            known = {v.video_id: v for v in store.videos()}
        todo: list[tuple[Path, VideoRecord | None]] = []
        for path in files:
            old = known.get(video_id_for(path))
            try:
                st = path.stat()
            except OSError as exc:
                summary.failed.append((str(path), exc.strerror or str(exc)))
                report(f"warning: skipped {path}: {exc.strerror or exc}")
                continue
            if old and old.size == st.st_size and old.mtime == st.st_mtime and old.model == identity:
                summary.skipped += 1
                continue
            todo.append((path, old))
        if todo:
            model = ClipModel(spec)
            with IndexStore(index_dir, create=True) as store:
                store.bind_model(identity, spec.to_dict())
            bar = tqdm(total=len(todo), unit="video", desc="indexing", file=sys.stderr,
                       disable=True if progress is False else None)  # None: only on a terminal
            for path, old in todo:
                bar.set_postfix_str(path.name[-40:])
                try:
                    st = path.stat()
                    fingerprint = _file_fingerprint(path)
                    analysed = analyse_video(path, model, options)
                except KeyboardInterrupt:
                    raise
                except (VideoError, OSError) as exc:
                    message = str(exc) if isinstance(exc, VideoError) else f"{path}: {exc.strerror or exc}"
                    summary.failed.append((str(path), message))
                    report(f"warning: skipped {message}")
                    bar.update(1)
                    continue
                except Exception as exc:  # a decoder or library fault on one file must not end the run
                    summary.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
                    report(f"warning: skipped {path}: {type(exc).__name__}: {exc}")
                    bar.update(1)
                    continue
                record = VideoRecord(
                    video_id=video_id_for(path), path=str(path), size=st.st_size, mtime=st.st_mtime,
                    fingerprint=fingerprint, duration=analysed.duration, fps=analysed.info.fps,
                    width=analysed.info.width, height=analysed.info.height, frame_count=analysed.frame_count,
                    scene_count=len(analysed.scenes), codec=analysed.info.codec, model=identity,
                    indexed_at=time.time(), version="",
                )
                with IndexStore(index_dir) as store:
                    store.put_video(record, analysed.scenes, analysed.vectors)
                if old is None:
                    summary.added += 1
                else:
                    summary.updated += 1
                summary.scenes += len(analysed.scenes)
                summary.video_seconds += analysed.duration
                bar.update(1)
            bar.close()
        try:
            rebuild(index_dir)
        except CliptoolError:
            pass  # nothing indexed yet: search will say so
    summary.seconds = time.monotonic() - started
    return summary


__all__ = ["AnalysedVideo", "IndexSummary", "analyse_video", "index_paths", "resolve_model_spec", "IndexMismatchError"]
