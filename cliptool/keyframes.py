"""Keyframes: one picture per distinct moment of a video, without near-duplicates, blanks or blur.

One sequential decode pass does everything that needs pixels:

- every frame (small) goes to the shot detector, so the video is cut into scenes;
- a candidate frame is taken every ``step`` seconds (by presentation time); its quality is
  measured on a small copy (`cliptool.quality`); a blank one is dropped at once, any other is
  written once at full resolution into a temporary folder and queued for CLIP, embedded in
  batches.

After the pass, with all candidates embedded, selection works per scene, then across scenes:

1. Blur: a candidate whose sharpness (variance of the Laplacian) is below 0.3x the median of
   the 6 candidates on each side (about 2 s each way at the default step) is dropped as
   blurry. Cuts are ignored here: a fast camera move often makes the detector cut around its
   blurred frames, which would then be compared only with each other.
2. Duplicate threshold, derived from this video (`adaptive_threshold`), from the cosine
   distances between neighbouring candidates inside scenes ("same picture" steps: noise and
   motion) and across cuts ("changed picture" steps). ``same`` is the 90th percentile of the
   in-scene distances (at least 1e-4), ``changed`` the 25th percentile of the cut distances
   (without cuts: the largest in-scene distance). When ``changed`` is at least 4x ``same`` the
   threshold is their geometric mean, the middle of the gap on a log scale, which does not
   depend on how a model scales its similarities (real CLIP or random weights); otherwise (no
   visible change anywhere) it is 2x ``same``. It is clamped to [0.001, 0.5].
3. Default mode: inside each scene a candidate starts a new moment when its distance to the
   moment's first frame (the last kept one) exceeds the threshold; each moment keeps its
   sharpest frame. The first frame of a scene always starts a moment, so a cut is never folded
   into the scene before it. Then, across the whole video, a moment whose picture is within
   the threshold of an earlier keyframe is a repeat (the same picture shown again later): it
   yields no second image, but is listed as an occurrence of that keyframe.
4. ``count`` mode: clusters never cross a cut unless fewer clusters than scenes are asked for.
   Start from one cluster per scene (repeats of an earlier scene join its cluster), merge the
   most similar clusters while there are too many, split the cluster with the largest spread by
   2-means (bisecting k-means) while there are too few; keep the frame nearest each centre.
   ``auto`` tries every K in [min, max] and keeps the one with the best silhouette (cosine).
5. Chapters: kept frames in time order are merged into contiguous segments (adjacent merges,
   Ward cost); the number of chapters is the one with the best silhouette.

Embeddings already in the index are reused when the video is indexed, unchanged, with the same
model: the index's scenes replace the detector, and its sample-frame vectors replace embedding
those frames. The index holds only about 3 vectors per scene (up to 10 s), too sparse to find
distinct moments inside a scene, so a scene's index vectors are used alone only where they are
about as dense as ``step`` (a sample every 1.5 steps or closer: in practice scenes of a second
or so); elsewhere the fixed-step candidates are decoded and embedded too, and the index's sample
frames join them without being embedded again. Either way the frames are decoded, since their
quality and the written images need pixels. With the index, its max-scene windows (10 s by
default) count as scenes too.

Cost: candidates are kept as full-resolution images in ``OUT/.keyframes-tmp-PID`` until the
selection is made (about 3 per second of video; a few hundred KB each at 1080p), then the
kept ones are moved into place and the rest deleted.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .decode import VideoReader, detect_bgr, detect_size, small_bgr, to_rgb
from .errors import UsageError
from .quality import FrameQuality, blank_reason, blurry, local_median, measure
from .timecode import format_time

IMAGE_FORMATS = ("jpg", "png")
MANIFEST = "manifest.json"
QUALITY_WIDTH = 256
_SEPARATION = 4.0  # a cut step this many times an in-scene step: the video shows real changes
_SAME_FLOOR = 1e-4  # in-scene steps below this are decoder noise
_DEFAULT_THRESHOLD = 0.1


@dataclass
class KeyframeOptions:
    step: float = 1 / 3  # seconds between candidate frames
    count: int | None = None  # None: distinct-moment mode; else this many clusters
    auto_count: bool = False  # choose the count by silhouette within [min_count, max_count]
    min_count: int = 2
    max_count: int = 24
    chapters: bool = False
    blank_filter: bool = True
    blur_filter: bool = True
    keep_repeats: bool = False  # keep a picture again each time a later scene shows it
    image_format: str = "jpg"
    detector: str = "content"
    detector_threshold: float | None = None
    min_scene_frames: int = 15
    batch_size: int = 32
    use_index: bool = True

    def check(self) -> None:
        if not self.step > 0:
            raise UsageError("--step must be positive")
        if self.image_format not in IMAGE_FORMATS:
            raise UsageError(f"unknown image format {self.image_format!r} (choose from jpg, png)")
        if self.count is not None and self.count < 1:
            raise UsageError("--count must be at least 1")
        if self.min_count < 1 or self.max_count < self.min_count:
            raise UsageError("need 1 <= --min-count <= --max-count")


@dataclass(eq=False)
class Candidate:
    index: int  # frame number in decode order
    time: float
    quality: FrameQuality
    scene: int = -1
    spill: Path | None = None  # full-resolution image written during the pass
    vector: np.ndarray | None = None
    from_index: bool = False
    status: str = ""  # kept, duplicate, repeat, blank, blurry
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    index: int
    start_frame: int
    end_frame: int
    start_time: float
    end_time: float


# -- pure selection steps ------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cos_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(0.0, 1.0 - float(np.dot(_unit(a), _unit(b)))))


def neighbour_distances(vectors: np.ndarray, scenes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances between consecutive vectors: (inside one scene, across a cut)."""
    v = _unit(vectors)
    if len(v) < 2:
        return np.zeros(0), np.zeros(0)
    d = np.clip(1.0 - np.sum(v[1:] * v[:-1], axis=1), 0.0, 2.0)
    same = np.asarray(scenes[1:]) == np.asarray(scenes[:-1])
    return d[same], d[~same]


def adaptive_threshold(d_in: np.ndarray, d_cut: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The near-duplicate distance for this video, from its neighbour distances (see module doc)."""
    d_in, d_cut = np.asarray(d_in, dtype=np.float64), np.asarray(d_cut, dtype=np.float64)
    info: dict[str, Any] = {"neighbour_pairs": int(len(d_in)), "cut_pairs": int(len(d_cut))}
    if len(d_in) == 0 and len(d_cut) == 0:
        return _DEFAULT_THRESHOLD, info | {"rule": f"no neighbours to learn from: default {_DEFAULT_THRESHOLD}"}
    same = max(float(np.quantile(d_in, 0.9)) if len(d_in) else 0.0, _SAME_FLOOR)
    changed = float(np.quantile(d_cut, 0.25)) if len(d_cut) else (float(d_in.max()) if len(d_in) else 0.0)
    info |= {"same": round(same, 6), "changed": round(changed, 6)}
    if changed >= _SEPARATION * same:
        t = float(np.sqrt(same * changed))
        info["rule"] = "geometric mean of in-scene step (90th pct) and cut step (25th pct)"
    else:
        t = 2.0 * same
        info["rule"] = "no clear change between neighbours: 2x the in-scene step (90th pct)"
    return float(min(max(t, 1e-3), 0.5)), info


def segment_moments(vectors: np.ndarray, threshold: float) -> list[tuple[list[int], float | None]]:
    """Splits one scene's vectors (time order) into moments: a new one when the distance to
    the current moment's first frame exceeds `threshold`. Returns (rows, distance of the
    moment's first frame to the previous moment's first frame, None for the first)."""
    moments: list[tuple[list[int], float | None]] = []
    anchor: np.ndarray | None = None
    for i, v in enumerate(vectors):
        d = None if anchor is None else _cos_dist(v, anchor)
        if d is None or d > threshold:
            moments.append(([i], d))
            anchor = v
        else:
            moments[-1][0].append(i)
    return moments


def _kmeans2(x: np.ndarray, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
    """Splits rows of x into two groups with k-means (k-means++ seeding); returns 0/1 labels."""
    first = int(rng.integers(len(x)))
    d = np.sum((x - x[first]) ** 2, axis=1)
    second = int(np.argmax(d)) if d.sum() == 0 else int(rng.choice(len(x), p=d / d.sum()))
    centres = np.stack([x[first], x[second]])
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        new = np.argmin(dist, axis=1)
        if (new == 0).all() or (new == 1).all():
            new = (np.arange(len(x)) >= len(x) // 2).astype(int)
        if np.array_equal(new, labels):
            break
        labels = new
        centres = np.stack([x[labels == k].mean(0) for k in (0, 1)])
    return labels


def _sse(x: np.ndarray) -> float:
    return float(((x - x.mean(0)) ** 2).sum()) if len(x) > 1 else 0.0


def scene_clusters(vectors: np.ndarray, scenes: list[int], k: int, repeat_threshold: float | None,
                   seed: int = 0) -> list[list[int]]:
    """`k` clusters (lists of row numbers) that never span a cut unless k < number of scenes."""
    x = _unit(vectors)
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault(s, []).append(i)
    clusters: list[list[int]] = []
    for members in groups.values():  # scenes in time order
        if repeat_threshold is not None:
            centre = x[members].mean(0)
            for c in clusters:
                if _cos_dist(centre, x[c].mean(0)) <= repeat_threshold:
                    c.extend(members)
                    break
            else:
                clusters.append(list(members))
        else:
            clusters.append(list(members))
    k = max(1, min(k, len(x)))
    while len(clusters) > k:  # merge the two most similar clusters
        centres = _unit(np.stack([x[c].mean(0) for c in clusters]))
        sim = centres @ centres.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        a, b = min(a, b), max(a, b)
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    while len(clusters) < k:  # bisect the cluster with the largest spread
        spread = [_sse(x[c]) if len(c) > 1 else -1.0 for c in clusters]
        j = int(np.argmax(spread))
        if spread[j] <= 0:
            break
        members = np.asarray(clusters[j])
        labels = _kmeans2(x[members], rng)
        clusters[j] = sorted(members[labels == 0].tolist())
        clusters.insert(j + 1, sorted(members[labels == 1].tolist()))
    return clusters


def silhouette(vectors: np.ndarray, clusters: list[list[int]]) -> float:
    """Mean silhouette (cosine distance) of a clustering; 0 for fewer than 2 clusters."""
    if len(clusters) < 2:
        return 0.0
    x = _unit(vectors)
    labels = np.empty(len(x), dtype=int)
    for c, members in enumerate(clusters):
        labels[members] = c
    dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    scores = []
    for i in range(len(x)):
        own = labels == labels[i]
        if own.sum() <= 1:
            scores.append(0.0)
            continue
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == c].mean() for c in range(len(clusters)) if c != labels[i])
        scores.append((b - a) / max(a, b, 1e-12))
    return float(np.mean(scores))


def contiguous_segments(vectors: np.ndarray, max_segments: int = 12) -> list[list[int]]:
    """Splits vectors in time order into contiguous chapters (adjacent Ward merges; the number
    of chapters by best silhouette)."""
    n = len(vectors)
    if n < 3:
        return [list(range(n))] if n else []
    x = _unit(vectors)
    segs = [[i] for i in range(n)]
    candidates: dict[int, list[list[int]]] = {}
    while len(segs) > 1:
        if len(segs) <= max_segments:
            candidates[len(segs)] = [list(s) for s in segs]
        costs = []
        for a in range(len(segs) - 1):
            na, nb = len(segs[a]), len(segs[a + 1])
            ca, cb = x[segs[a]].mean(0), x[segs[a + 1]].mean(0)
            costs.append(na * nb / (na + nb) * float(((ca - cb) ** 2).sum()))
        a = int(np.argmin(costs))
        segs[a] = segs[a] + segs[a + 1]
        del segs[a + 1]
    best, best_score = [list(range(n))], 0.0
    for count in sorted(candidates):
        if 2 <= count < n:
            score = silhouette(x, candidates[count])
            if score > best_score + 1e-9:
                best, best_score = candidates[count], score
    return best


# -- the decode pass -----------------------------------------------------------------------------
class _Embedder:
    def __init__(self, get_model: Callable[[], Any], batch_size: int) -> None:
        self.get_model = get_model
        self.batch_size = batch_size
        self._queue: list[tuple[Candidate, np.ndarray]] = []

    def add(self, cand: Candidate, rgb: np.ndarray) -> None:
        self._queue.append((cand, self.get_model().preprocess(rgb)))
        if len(self._queue) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._queue:
            return
        vectors = self.get_model().encode_preprocessed(np.stack([x for _, x in self._queue]))
        for (cand, _), vec in zip(self._queue, vectors):
            cand.vector = np.asarray(vec, dtype=np.float32)
        self._queue.clear()


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UsageError(f"cannot encode a {fmt} image")
    return buf.tobytes()


@dataclass
class _IndexedVideo:
    scenes: list[Scene]
    vectors: dict[int, np.ndarray]  # frame number -> vector
    dense_scenes: set[int]  # scenes whose index vectors alone are dense enough


def _from_index(video: Path, index_dir: Path | None, identity: str, step: float) -> _IndexedVideo | None:
    if index_dir is None:
        return None
    from .store import IndexStore, video_id_for

    store = IndexStore(index_dir)
    if not store.exists():
        return None
    try:
        with store:
            record = store.get_video(video_id_for(video))
            if record is None or record.model != identity:
                return None
            st = video.stat()
            if record.size != st.st_size or record.mtime != st.st_mtime:
                return None
            scene_records = store.scenes(record)
            vectors = store.vectors(record)
    except Exception:  # an index we cannot read is only a missed shortcut
        return None
    if not scene_records or len(vectors) != len(scene_records):
        return None
    scenes, by_frame, dense = [], {}, set()
    for i, (s, v) in enumerate(zip(scene_records, vectors)):
        scenes.append(Scene(i, s.start_frame, s.end_frame, s.start_time, s.end_time))
        for frame_no, vec in zip(s.sample_frames, v.frames):
            by_frame[int(frame_no)] = np.asarray(vec, dtype=np.float32)
        if s.sample_frames and (s.end_time - s.start_time) / len(s.sample_frames) <= step * 1.5:
            dense.add(i)
    return _IndexedVideo(scenes, by_frame, dense)


def _scenes_from_cuts(cuts: list[int], times: list[float], end_time: float) -> list[Scene]:
    n = len(times)
    bounds = [0] + sorted({c for c in cuts if 0 < c < n}) + [n]
    return [
        Scene(i, a, b, times[a], times[b] if b < n else end_time)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


def _file_name(number: int, t: float, fmt: str) -> str:
    return f"{number:04d}_{format_time(t).replace(':', '-')}.{fmt}"


def _clean_previous(out_dir: Path) -> None:
    """Removes the images a previous run listed in its manifest (so runs do not mix)."""
    manifest = out_dir / MANIFEST
    try:
        old = json.loads(manifest.read_text())
        names = [k["file"] for k in old.get("keyframes", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    for name in names:
        if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            (out_dir / name).unlink(missing_ok=True)


def extract_keyframes(
    video: Path,
    out_dir: Path,
    get_model: Callable[[], Any],
    identity: str,
    options: KeyframeOptions | None = None,
    index_dir: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Writes the keyframes of `video` and `manifest.json` into `out_dir`; returns the manifest.

    `get_model` returns the ClipModel (called only if something must be embedded); `identity`
    is that model's identity, used to decide whether the index's vectors can be reused.
    """
    from tqdm import tqdm

    options = options or KeyframeOptions()
    options.check()
    video = Path(video).expanduser()
    if not video.is_file():
        raise UsageError(f"no such video: {video}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output is not a folder: {out_dir}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out_dir}: {exc.strerror}") from None

    indexed = _from_index(video.absolute(), index_dir, identity, options.step) if options.use_index else None
    spill_dir = out_dir / f".keyframes-tmp-{os.getpid()}"
    spill_dir.mkdir(exist_ok=True)
    try:
        candidates, dropped, scenes, info, frame_count, end_time = _decode_pass(
            video, spill_dir, get_model, options, indexed, progress, tqdm
        )
        manifest = _select_and_write(
            out_dir, candidates, dropped, scenes, options, indexed is not None
        )
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    manifest |= {
        "video": str(video), "width": info.width, "height": info.height, "fps": round(info.fps, 6),
        "frames": frame_count, "duration": round(end_time, 6),
    }
    ordered = {k: manifest[k] for k in ("video", "width", "height", "fps", "frames", "duration")}
    ordered |= {k: v for k, v in manifest.items() if k not in ordered}
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(ordered, indent=2, ensure_ascii=False))
    tmp.replace(out_dir / MANIFEST)
    return ordered


def _decode_pass(video: Path, spill_dir: Path, get_model: Callable[[], Any], options: KeyframeOptions,
                 indexed: _IndexedVideo | None, progress: bool | None, tqdm: Any) -> tuple[Any, ...]:
    """The one sequential decode pass: detector, candidates, quality, spilled images, embeddings."""
    from .detect import make_detector

    embedder = _Embedder(get_model, options.batch_size)
    candidates: list[Candidate] = []
    dropped: list[Candidate] = []
    times: list[float] = []
    cuts: list[int] = []
    index_frames = indexed.vectors if indexed else {}
    with VideoReader(video) as reader:
        info = reader.info
        detector = None
        if indexed is None:
            try:
                detector = make_detector(options.detector, options.detector_threshold, options.min_scene_frames)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        w, h = max(2, info.width), max(2, info.height)
        dsize = detector.frame_size(w, h) if detector else None
        qsize = detect_size(w, h, QUALITY_WIDTH)
        total = int(info.duration * info.fps) if info.duration > 0 and info.fps > 0 else None
        bar = tqdm(total=total, unit="frame", desc=f"keyframes {video.name[-30:]}", file=sys.stderr,
                   disable=True if progress is False else None, leave=False)
        dense_starts = sorted((s.start_frame, s.end_frame) for s in indexed.scenes if s.index in indexed.dense_scenes) \
            if indexed else []
        next_t = 0.0
        last_step = 0.0
        for frame in reader.frames():
            if times:
                last_step = frame.time - times[-1]
            times.append(frame.time)
            bar.update(1)
            if detector is not None:
                cuts.extend(detector.push(frame.index, detect_bgr(frame.av_frame, dsize)))
            in_dense = any(a <= frame.index < b for a, b in dense_starts) if dense_starts else False
            on_step = frame.time + 1e-6 >= next_t
            if on_step:
                while next_t <= frame.time + 1e-6:
                    next_t += options.step
            take = (on_step and not in_dense) or frame.index in index_frames
            if not take:
                continue
            cand = Candidate(frame.index, frame.time, measure(small_bgr(frame.av_frame, qsize)))
            reason = blank_reason(cand.quality) if options.blank_filter else None
            if reason is not None:
                cand.status, cand.reason = "blank", reason
                dropped.append(cand)
                continue
            rgb = to_rgb(frame.av_frame)
            cand.spill = spill_dir / f"{frame.index:08d}.{options.image_format}"
            cand.spill.write_bytes(_encode(rgb, options.image_format))
            if frame.index in index_frames:
                cand.vector = index_frames[frame.index]
                cand.from_index = True
            else:
                embedder.add(cand, rgb)
            candidates.append(cand)
        bar.close()
        if detector is not None:
            cuts.extend(detector.flush())
        embedder.flush()
    step = last_step if last_step > 0 else (1.0 / info.fps if info.fps > 0 else 0.0)
    end_time = times[-1] + step
    if indexed is not None:
        scenes = indexed.scenes
    else:
        scenes = _scenes_from_cuts(cuts, times, end_time)
    starts = [s.start_frame for s in scenes]
    for cand in candidates + dropped:
        cand.scene = max(0, bisect.bisect_right(starts, cand.index) - 1)
    return candidates, dropped, scenes, info, len(times), end_time


def _select_and_write(out_dir: Path, candidates: list[Candidate], dropped: list[Candidate], scenes: list[Scene],
                      options: KeyframeOptions, used_index: bool) -> dict[str, Any]:
    """Blur, threshold, selection, chapters; moves the kept images into place; the manifest."""
    fmt = options.image_format
    # 1. blur, relative to the candidates around each one (blank frames kept by --keep-blank are
    #    neither judged nor used as reference)
    if options.blur_filter:
        judged = [c for c in candidates if blank_reason(c.quality) is None]
        sharp = [c.quality.sharpness for c in judged]
        for i, (c, is_blurry) in enumerate(zip(judged, blurry(sharp))):
            if is_blurry:
                c.status, c.reason = "blurry", "blurry"
                c.detail = {"sharpness": round(c.quality.sharpness, 2),
                            "local_median_sharpness": round(local_median(sharp, i), 2)}
        dropped.extend(c for c in candidates if c.status == "blurry")
        candidates = [c for c in candidates if c.status != "blurry"]

    vectors = np.stack([c.vector for c in candidates]) if candidates else np.zeros((0, 1), np.float32)
    labels = [c.scene for c in candidates]
    d_in, d_cut = neighbour_distances(vectors, labels)
    threshold, threshold_info = adaptive_threshold(d_in, d_cut)
    manifest: dict[str, Any] = {
        "source": "index scenes and vectors + decoded frames" if used_index else "decoded",
        "detector": "index" if used_index else options.detector,
        "step": round(options.step, 6),
        "threshold": {"distance": round(threshold, 6), "similarity": round(1 - threshold, 6)} | threshold_info,
        "quality": {
            "blank_filter": options.blank_filter, "blur_filter": options.blur_filter,
            "rules": "black: 99th luma percentile <= 40; white: 1st percentile >= 225; solid colour: "
                     "luma std < 6; low detail: < 0.2% edge pixels (Sobel magnitude > 32), all on a "
                     "256-pixel-wide copy; blurry: variance of Laplacian < 0.3x the median of the 6 candidates each side",
        },
    }

    kept: list[Candidate] = []
    chosen_count: int | None = None
    if options.count is None and not options.auto_count:
        manifest["mode"] = "distinct"
        kept = _select_distinct(candidates, vectors, threshold, options.keep_repeats)
    else:
        manifest["mode"] = "count"
        repeat_t = None if options.keep_repeats else threshold
        if not candidates:
            clusters = []
        elif options.auto_count:
            scores: dict[int, float] = {}
            best: tuple[float, int, list[list[int]]] | None = None
            hi = min(options.max_count, max(1, len(candidates) - 1))
            for k in range(min(options.min_count, hi), hi + 1):
                clusters = scene_clusters(vectors, labels, k, repeat_t)
                if len(clusters) != k:
                    continue
                scores[k] = round(silhouette(vectors, clusters), 6)
                if best is None or scores[k] > best[0] + 1e-9:
                    best = (scores[k], k, clusters)
            clusters = best[2] if best else scene_clusters(vectors, labels, options.min_count, repeat_t)
            manifest["count_chosen_by"] = {"criterion": "silhouette (cosine)", "scores": scores}
        else:
            clusters = scene_clusters(vectors, labels, options.count or 1, repeat_t)
        chosen_count = len(clusters)
        kept = _select_clusters(candidates, vectors, clusters)
        manifest["count"] = chosen_count

    kept.sort(key=lambda c: c.index)
    for c in candidates:
        if c.status != "kept" and c not in dropped:
            dropped.append(c)

    # chapters
    chapter_of: dict[int, int] = {}
    chapters_out: list[dict[str, Any]] = []
    if options.chapters and kept:
        kv = np.stack([c.vector for c in kept])
        segments = contiguous_segments(kv)
        for n, seg in enumerate(segments):
            first = kept[seg[0]]
            last = kept[seg[-1]]
            start = scenes[first.scene].start_time if n else 0.0
            for i in seg:
                chapter_of[id(kept[i])] = n
            chapters_out.append({"index": n, "start": round(start, 6), "start_timecode": format_time(start),
                                 "first_keyframe_time": round(first.time, 6),
                                 "last_keyframe_time": round(last.time, 6), "keyframes": len(seg)})
        for n in range(len(chapters_out) - 1):
            chapters_out[n]["end"] = chapters_out[n + 1]["start"]
        if chapters_out:
            chapters_out[-1]["end"] = round(scenes[-1].end_time, 6)

    # write (first removing what a previous run wrote here, so runs never mix)
    _clean_previous(out_dir)
    out_keyframes = []
    number_of: dict[int, int] = {}
    for n, c in enumerate(kept):
        name = _file_name(n, c.time, fmt)
        os.replace(c.spill, out_dir / name)
        number_of[id(c)] = n
        entry = {"file": name, "time": round(c.time, 6), "timecode": format_time(c.time), "frame": c.index,
                 "scene": c.scene, "reason": c.reason} | c.detail
        entry["quality"] = c.quality.to_dict()
        entry["embedding"] = "index" if c.from_index else "decoded"
        if options.chapters:
            entry["chapter"] = chapter_of.get(id(c))
        out_keyframes.append(entry)
    for entry, c in zip(out_keyframes, kept):
        occ = [{"time": round(o.time, 6), "frame": o.index, "scene": o.scene}
               for o in candidates if o.status == "repeat" and o.detail.get("_of") is c]
        if occ:
            entry["repeats"] = occ
    out_dropped = []
    for c in sorted(dropped, key=lambda c: c.index):
        entry = {"time": round(c.time, 6), "timecode": format_time(c.time), "frame": c.index, "scene": c.scene,
                 "reason": c.reason}
        of = c.detail.get("_of")
        if of is not None and id(of) in number_of:
            entry["same_as"] = out_keyframes[number_of[id(of)]]["file"]
        entry |= {k: v for k, v in c.detail.items() if not k.startswith("_")}
        if c.status == "blank":
            entry["quality"] = c.quality.to_dict()
        out_dropped.append(entry)
    manifest["scenes"] = [{"index": s.index, "start": round(s.start_time, 6), "end": round(s.end_time, 6),
                           "start_frame": s.start_frame, "end_frame": s.end_frame} for s in scenes]
    manifest["keyframes"] = out_keyframes
    if options.chapters:
        manifest["chapters"] = chapters_out
    manifest["dropped"] = out_dropped
    every = list({id(c): c for c in candidates + dropped}.values())
    manifest["counts"] = {
        "candidates": len(candidates) + sum(1 for c in dropped if c.status in ("blank", "blurry")),
        "kept": len(kept),
        "embedded": sum(1 for c in every if c.vector is not None and not c.from_index),
        "from_index": sum(1 for c in every if c.from_index),
        **{s: sum(1 for c in dropped if c.status == s) for s in ("duplicate", "repeat", "blank", "blurry")},
    }
    return manifest


def _select_distinct(candidates: list[Candidate], vectors: np.ndarray, threshold: float,
                     keep_repeats: bool) -> list[Candidate]:
    by_scene: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_scene.setdefault(c.scene, []).append(i)
    kept: list[Candidate] = []
    for scene, rows in sorted(by_scene.items()):
        for moment, start_dist in segment_moments(vectors[rows], threshold):
            members = [candidates[rows[j]] for j in moment]
            best = max(members, key=lambda c: c.quality.sharpness)
            if start_dist is not None:
                why = (f"new moment in scene {scene}: its first frame is {start_dist:.4f} from the previous "
                       f"moment's (threshold {threshold:.4f})")
            else:
                why = f"first moment of scene {scene}"
            best.status = "kept"
            best.reason = why + (f"; sharpest of {len(members)} near-duplicates" if len(members) > 1 else "")
            best.detail = {"moment_frames": len(members)}
            for c in members:
                if c is not best:
                    c.status, c.reason = "duplicate", "near-duplicate"
                    c.detail = {"distance": round(_cos_dist(c.vector, best.vector), 6), "_of": best}
            # a picture an earlier scene already showed is a repeat, not a new keyframe
            earlier = [k for k in kept if k.scene == scene] if keep_repeats else kept
            if earlier:
                dists = [_cos_dist(best.vector, k.vector) for k in earlier]
                j = int(np.argmin(dists))
                if dists[j] <= threshold:
                    same = earlier[j]
                    if same.scene == scene:
                        best.status, best.reason = "duplicate", "near-duplicate"
                    else:
                        best.status, best.reason = "repeat", "repeat of a keyframe of an earlier scene"
                    best.detail = {"distance": round(dists[j], 6), "_of": same}
                    for c in members:
                        if c.status == "duplicate":
                            c.detail["_of"] = same
                    continue
            kept.append(best)
    return kept


def _select_clusters(candidates: list[Candidate], vectors: np.ndarray, clusters: list[list[int]]) -> list[Candidate]:
    x = _unit(vectors)
    chosen = []
    for members in clusters:
        sims = x[members] @ _unit(x[members].mean(0))
        chosen.append((members[int(np.argmax(sims))], members))
    chosen.sort()  # number clusters in time order of their keyframes
    kept = []
    for n, (row, members) in enumerate(chosen):
        best = candidates[row]
        scenes = sorted({candidates[i].scene for i in members})
        best.status = "kept"
        best.reason = f"nearest the centre of cluster {n} ({len(members)} frames, scene{'s' if len(scenes) > 1 else ''} " \
                      f"{', '.join(map(str, scenes))})"
        best.detail = {"cluster": n, "cluster_frames": len(members)}
        for i in members:
            c = candidates[i]
            if c is not best:
                c.status, c.reason = "duplicate", "in the cluster of a keyframe"
                c.detail = {"cluster": n, "distance": round(_cos_dist(c.vector, best.vector), 6), "_of": best}
        kept.append(best)
    return kept
