"""Stage 9: write a frame to an image file: the best match for a query, or the frame at a time."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cliptool.media.decode import VideoReader, frame_at, to_rgb
from cliptool.errors import UsageError
from cliptool.store import video_id_for

IMAGE_SUFFIXES = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}


@dataclass
class ExportResult:
    output: str
    video: str
    time: float
    width: int
    height: int
    score: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_output(output: Path) -> Path:
    """Validates the output path before any work: a known image suffix in an existing folder."""
    output = Path(output).expanduser()
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"output must end in .jpg, .jpeg or .png: {output}")
    if not output.parent.is_dir():
        raise UsageError(f"output folder does not exist: {output.parent}")
    return output


def write_image(output: Path, rgb: np.ndarray) -> None:
    import cv2

    ext = IMAGE_SUFFIXES[output.suffix.lower()]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UsageError(f"cannot encode image for {output}")
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None


def export_at(video: Path, t: float, output: Path) -> ExportResult:
    video = Path(video)
    if not video.is_file():
        raise UsageError(f"no such video: {video}")
    output = check_output(output)
    time, rgb = frame_at(video, t)
    write_image(output, rgb)
    return ExportResult(str(output), str(video), time, rgb.shape[1], rgb.shape[0])


NEAR_SECONDS = 1.0  # export-frame looks this far either side of search's best time


def best_frame_in_span(
    model: object, video: Path, query: np.ndarray, start: float, end: float, step: float, batch: int = 32,
    around: float | None = None,
) -> tuple[float, float, np.ndarray]:
    """Scores frames every `step` seconds in [start, end) against the query; returns the best
    (time, score, full-resolution RGB).

    With `around` (search's best time: the sample frame that matched), only the frames within
    NEAR_SECONDS (at least 5 steps) of it are scored, that sample frame itself included, so the
    exported frame is the moment search found, however short, and not another part of a long
    scene that the model happens to score a little higher."""
    if around is not None and start <= around < end:
        reach = max(NEAR_SECONDS, 5 * step)
        start, end = max(start, around - reach), min(end, around + reach)
    best: tuple[float, float, np.ndarray] | None = None
    pending: list[tuple[float, np.ndarray, np.ndarray]] = []

    def score_pending() -> None:
        nonlocal best
        if not pending:
            return
        views = [len(p[1]) for p in pending]  # each frame scores its best view, as search does
        vecs = model.encode_preprocessed(np.concatenate([p[1] for p in pending]))  # type: ignore[attr-defined]
        scores = np.array([part.max() for part in np.split(vecs @ query, np.cumsum(views)[:-1])])
        i = int(np.argmax(scores))
        if best is None or scores[i] > best[1]:
            best = (pending[i][0], float(scores[i]), pending[i][2])
        pending.clear()

    next_time = start
    with VideoReader(video) as reader:
        for frame in reader.frames_from(start):
            if frame.time >= end and (pending or best is not None):
                break
            exact = around is not None and abs(frame.time - around) < 1e-4
            if frame.time + 1e-6 < next_time and not exact:
                continue
            rgb = to_rgb(frame.av_frame)
            pending.append((frame.time, model.preprocess_views(rgb), rgb))  # type: ignore[attr-defined]
            next_time = frame.time + step
            if len(pending) >= batch:
                score_pending()
    score_pending()
    if best is None:
        raise UsageError(f"{video}: no frames between {start:.3f} and {end:.3f} s")
    return best


def export_best(
    searcher: object, query: np.ndarray, output: Path, video: Path | None = None, step: float = 0.2
) -> ExportResult:
    """Finds the best scene for the query (in `video` if given), then the best frame in it near
    the sample frame that made it the best (see `best_frame_in_span`)."""
    output = check_output(output)
    if video is not None:
        hit = searcher.best_in_video(query, video_id_for(Path(video).expanduser()))  # type: ignore[attr-defined]
        if hit is None:
            raise UsageError(f"not in the index: {video} (run `cliptool index` on it first)")
    else:
        hit = searcher.search(query, top=1)[0]  # type: ignore[attr-defined]
    time, score, rgb = best_frame_in_span(searcher.model, Path(hit.path), query, hit.start, hit.end, step,  # type: ignore[attr-defined]
                                          around=hit.best_time)
    write_image(output, rgb)
    return ExportResult(str(output), hit.path, time, rgb.shape[1], rgb.shape[0], score)
