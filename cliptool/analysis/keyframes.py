"""Keyframes: one picture per distinct moment of a video, without near-duplicates, blanks or blur.

The video goes through the same analysis pass as `index` (`cliptool.analysis.analyse`: decode, detect,
cut into scenes with the same windows, embed), with a tap that also takes a candidate frame
every ``step`` seconds. Each candidate (and each scene sample) is measured on a small copy
(`cliptool.analysis.quality`); a blank one is dropped at once, any other is written once at full
resolution into a temporary folder and embedded.

Selection then works per shot (the windows of a long shot count as one here), then across shots:

1. Blur: a candidate whose sharpness is below 0.3x the median of the 6 candidates on each side
   is dropped as blurry (cuts ignored: a fast camera move often makes the detector cut there).
2. Duplicate threshold, from this video (`adaptive_threshold`): ``same`` is the 90th percentile
   of neighbour distances inside shots (at least 1e-4), ``changed`` the 25th percentile of
   distances across cuts (without cuts: the largest in-shot distance). When ``changed`` is at
   least 4x ``same`` the threshold is their geometric mean, else 2x ``same``; clamped to
   [0.001, 0.5]. It does not depend on how a model scales its similarities.
3. Default mode (`segment_moments`): inside a shot, a new moment starts at a change: a run of
   neighbour steps each well above the shot's usual step (a missed cut, a dissolve, a fast
   move) across which the picture moved more than the threshold. Smooth drift (a slow zoom or
   pan) never starts one. Each moment keeps the sharpest of its typical frames. A moment within
   the threshold of an earlier keyframe is a repeat (or, in the same shot, a duplicate): no
   second image, listed as an occurrence of that keyframe.
4. ``count`` mode: clusters never cross a cut unless fewer clusters than shots are asked for.
   Start from one cluster per shot (repeats of an earlier shot join its cluster); too many:
   k-means on the clusters' centres; too few: split the cluster with the largest spread by
   2-means. Keep the frame nearest each centre. ``auto`` keeps the K in [min, max] with the best
   silhouette (cosine, on a fixed sample of at most 3000 candidates).
5. Chapters: kept frames in time order merged into contiguous segments (adjacent merges, Ward
   cost); the number of chapters is the one with the best silhouette.

Embeddings already in the index are reused when the video is indexed, unchanged, with the same
model: the index's scenes replace the detector, and its sample vectors are not computed again.
Fixed-step candidates are skipped in scenes whose index samples are about as dense as ``step``.
The model is loaded only when a picture must be embedded: when the index holds every vector
needed, it is never loaded (it need not even be loadable).

Cost: candidates are kept as full-resolution images in ``OUT/.keyframes-tmp-PID`` until the
selection is made (about 3 per second of video), then the kept ones are moved into place.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cliptool.config import IndexOptions
from cliptool.media.decode import Frame, VideoReader, detect_size, small_bgr
from cliptool.errors import ModelUnavailableError, UsageError
from cliptool.analysis.quality import FrameQuality, blank_reason, blurry, local_median, measure
from cliptool.media.timecode import format_time
from cliptool.models.views import DEFAULT_VIEWS, VIEWS, per_sample, whole

if TYPE_CHECKING:
    from cliptool.analysis.analyse import AnalysedVideo, KnownScenes
    from cliptool.models.clip import ClipModel

IMAGE_FORMATS = ("jpg", "png")
MANIFEST = "manifest.json"
QUALITY_WIDTH = 256
_SEPARATION = 4.0  # a cut step this many times an in-shot step: the video shows real changes
_SAME_FLOOR = 1e-4  # in-shot steps below this are decoder noise
_DEFAULT_THRESHOLD = 0.1
_JUMP = 3.0  # a neighbour step this many times the usual one is part of a change, not drift
_SILHOUETTE_SAMPLE = 3000  # candidates the silhouette is measured on (a fixed random sample)
_KMEANS_SAMPLE = 2000  # rows k-means is fitted on (the rest are assigned to its centres)
_SEED = 0


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
    keep_repeats: bool = False  # keep a picture again each time a later shot shows it
    image_format: str = "jpg"
    detector: str = "content"
    detector_threshold: float | None = None
    min_scene_frames: int = 15
    max_scene_seconds: float = 10.0  # windows, as `index --max-scene`
    samples_per_scene: int = 3  # as `index --samples`
    batch_size: int = 32
    use_index: bool = True
    views: str | None = None  # what the tower sees (models.views); None: the index's for an indexed video, else the default

    def check(self) -> None:
        from cliptool.analysis.detect import DETECTORS

        if not self.step > 0:
            raise UsageError("--step must be positive")
        if self.image_format not in IMAGE_FORMATS:
            raise UsageError(f"unknown image format {self.image_format!r} (choose from jpg, png)")
        if self.count is not None and self.count < 1:
            raise UsageError("--count must be at least 1")
        if self.min_count < 1 or self.max_count < self.min_count:
            raise UsageError("need 1 <= --min-count <= --max-count")
        if self.views is not None and self.views not in VIEWS:
            raise UsageError(f"unknown views {self.views!r} (choose from {', '.join(VIEWS)})")
        if self.detector not in DETECTORS:
            raise UsageError(f"unknown detector {self.detector!r} (choose from {', '.join(DETECTORS)})")

    def analysis(self) -> IndexOptions:
        """The analysis pass's options: those `index` would use with the same settings. A
        frame's vector is the whole picture's (the normalised mean of its views)."""
        return replace(IndexOptions(), detector=self.detector, threshold=self.detector_threshold,
                       min_scene_frames=self.min_scene_frames, max_scene_seconds=self.max_scene_seconds,
                       samples_per_scene=self.samples_per_scene, batch_size=self.batch_size,
                       views=self.views or DEFAULT_VIEWS)


@dataclass(eq=False)
class Candidate:
    index: int  # frame number in decode order
    time: float
    quality: FrameQuality
    scene: int = -1
    shot: int = -1
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
    shot: int = -1  # windows of one long shot share it; -1: the scene's own index

    def __post_init__(self) -> None:
        if self.shot < 0:
            self.shot = self.index


# -- pure selection steps ------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _steps(x: np.ndarray) -> np.ndarray:
    """Cosine distances between consecutive unit vectors."""
    return np.clip(1.0 - np.sum(x[1:] * x[:-1], axis=1, dtype=np.float64), 0.0, 2.0)


def neighbour_distances(vectors: np.ndarray, shots: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances between consecutive vectors: (inside one shot, across a cut)."""
    if len(vectors) < 2:
        return np.zeros(0), np.zeros(0)
    d = _steps(_unit(vectors))
    same = np.asarray(shots[1:]) == np.asarray(shots[:-1])
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
        info["rule"] = "geometric mean of in-shot step (90th pct) and cut step (25th pct)"
    else:
        t = 2.0 * same
        info["rule"] = "no clear change between neighbours: 2x the in-shot step (90th pct)"
    return float(min(max(t, 1e-3), 0.5)), info


def segment_moments(vectors: np.ndarray, threshold: float,
                    usual_step: float = 0.0) -> list[tuple[list[int], float | None]]:
    """Splits one shot's vectors (time order) into moments; returns (rows, distance across the
    change that started the moment, None for the first).

    A change is a run of neighbour steps each above `_JUMP` times the usual step (the larger of
    `usual_step`, the video's, and this shot's median step when it has 4 or more), across which
    the picture moved more than `threshold`; the new moment starts after the run's largest step.
    Drift, however far it goes, is made of usual steps, so it never starts a moment."""
    x = _unit(vectors)
    if len(x) < 2:
        return [(list(range(len(x))), None)] if len(x) else []
    steps = _steps(x)
    usual = max(usual_step, float(np.median(steps)) if len(steps) >= 4 else 0.0, _SAME_FLOOR)
    big = steps > _JUMP * usual
    starts: list[tuple[int, float]] = []
    i = 0
    while i < len(steps):
        if not big[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(steps) and big[j + 1]:
            j += 1
        across = float(max(0.0, 1.0 - float(np.dot(x[i], x[j + 1]))))
        if across > threshold:
            starts.append((i + 1 + int(np.argmax(steps[i : j + 1])), across))
        i = j + 1
    bounds = [0] + [s for s, _ in starts] + [len(x)]
    dists: list[float | None] = [None] + [d for _, d in starts]
    return [(list(range(a, b)), d) for a, b, d in zip(bounds[:-1], bounds[1:], dists)]


class _NearestKept:
    """The kept keyframes' unit vectors, for nearest-neighbour look-ups (one matrix product each)."""

    def __init__(self, dim: int) -> None:
        self._rows = np.zeros((16, dim), dtype=np.float32)
        self._who: list[Candidate] = []

    def add(self, cand: Candidate, unit: np.ndarray) -> None:
        if len(self._who) == len(self._rows):
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
        self._rows[len(self._who)] = unit
        self._who.append(cand)

    def nearest(self, unit: np.ndarray) -> tuple[Candidate, float] | None:
        if not self._who:
            return None
        sims = self._rows[: len(self._who)] @ unit
        j = int(np.argmax(sims))
        return self._who[j], float(max(0.0, 1.0 - float(sims[j])))


def _shot_groups(shots: list[int]) -> list[list[int]]:
    """Row numbers by shot, shots in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(shots):
        groups.setdefault(s, []).append(i)
    return list(groups.values())


def _initial_clusters(x: np.ndarray, shots: list[int], repeat_threshold: float | None) -> list[list[int]]:
    """One cluster per shot; with `repeat_threshold`, a shot joins the nearest earlier cluster
    whose centre is that close to its own."""
    clusters: list[list[int]] = []
    sums = np.zeros((0, x.shape[1]), dtype=np.float64)
    for members in _shot_groups(shots):
        total = x[members].sum(0, dtype=np.float64)
        if repeat_threshold is not None and clusters:
            centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            sims = centres @ (total / max(float(np.linalg.norm(total)), 1e-12))
            j = int(np.argmax(sims))
            if 1.0 - sims[j] <= repeat_threshold:
                clusters[j].extend(members)
                sums[j] += total
                continue
        clusters.append(list(members))
        sums = np.vstack([sums, total])
    return clusters


def _kmeans_labels(x: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """k-means labels (fitted on a fixed sample of at most `_KMEANS_SAMPLE` rows)."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=3, random_state=_SEED)
    if len(x) <= _KMEANS_SAMPLE:
        return model.fit(x, sample_weight=weights).labels_
    rows = np.random.default_rng(_SEED).choice(len(x), _KMEANS_SAMPLE, replace=False)
    model.fit(x[rows], sample_weight=None if weights is None else weights[rows])
    return model.predict(x)


def _merged(x: np.ndarray, clusters: list[list[int]], k: int) -> list[list[int]]:
    """`k` groups of whole clusters: k-means on the clusters' centres, weighted by their sizes."""
    centres = _unit(np.stack([x[c].mean(0) for c in clusters]))
    labels = _kmeans_labels(centres, k, np.array([len(c) for c in clusters], dtype=np.float64))
    groups: dict[int, list[int]] = {}
    for c, label in zip(clusters, labels):
        groups.setdefault(int(label), []).extend(c)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def _sse(x: np.ndarray) -> float:
    return float(((x - x.mean(0)) ** 2).sum()) if len(x) > 1 else 0.0


def _bisections(x: np.ndarray, clusters: list[list[int]], k_max: int) -> dict[int, list[list[int]]]:
    """Clusterings from len(clusters) up to `k_max` clusters, each one from the one before by
    splitting the cluster with the largest spread in two (2-means)."""
    clusters = [list(c) for c in clusters]
    spread = [_sse(x[c]) for c in clusters]
    out = {len(clusters): [list(c) for c in clusters]}
    while len(clusters) < k_max:
        j = int(np.argmax(spread))
        if spread[j] <= 0:
            break
        members = np.asarray(clusters[j])
        labels = _kmeans_labels(x[members], 2)
        if labels.min() == labels.max():
            labels = (np.arange(len(members)) >= len(members) // 2).astype(int)
        parts = [sorted(members[labels == side].tolist()) for side in (0, 1)]
        clusters[j : j + 1] = parts
        spread[j : j + 1] = [_sse(x[p]) for p in parts]
        out[len(clusters)] = [list(c) for c in clusters]
    return out


def cluster_path(vectors: np.ndarray, shots: list[int], ks: list[int],
                 repeat_threshold: float | None) -> dict[int, list[list[int]]]:
    """Clusterings for each K in `ks` that can be made (see `scene_clusters`)."""
    x = _unit(vectors)
    initial = _initial_clusters(x, shots, repeat_threshold)
    ks = sorted({max(1, min(k, len(x))) for k in ks})
    out: dict[int, list[list[int]]] = {}
    for k in ks:
        if k < len(initial):
            clusters = _merged(x, initial, k)
            if len(clusters) == k:
                out[k] = clusters
    if ks and ks[-1] >= len(initial):
        for k, clusters in _bisections(x, initial, ks[-1]).items():
            if k in ks:
                out[k] = clusters
    return out


def scene_clusters(vectors: np.ndarray, shots: list[int], k: int,
                   repeat_threshold: float | None) -> list[list[int]]:
    """`k` clusters (lists of row numbers) that never span a cut unless k < number of shots."""
    path = cluster_path(vectors, shots, [k], repeat_threshold)
    if path:
        return next(iter(path.values()))
    return _initial_clusters(_unit(vectors), shots, repeat_threshold)


def _labels(n: int, clusters: list[list[int]]) -> np.ndarray:
    labels = np.empty(n, dtype=np.int64)
    for c, members in enumerate(clusters):
        labels[members] = c
    return labels


class _Silhouette:
    """Mean silhouette (cosine distance) of clusterings of the same vectors, measured on a fixed
    sample of at most `_SILHOUETTE_SAMPLE` rows whose distances are computed once."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.n = len(vectors)
        self.rows = np.arange(self.n)
        if self.n > _SILHOUETTE_SAMPLE:
            self.rows = np.sort(np.random.default_rng(_SEED).choice(self.n, _SILHOUETTE_SAMPLE, replace=False))
        x = _unit(vectors)[self.rows]
        self.dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
        np.fill_diagonal(self.dist, 0.0)

    def __call__(self, clusters: list[list[int]]) -> float:
        """0 for fewer than 2 clusters."""
        import sklearn
        from sklearn.metrics import silhouette_score

        labels = _labels(self.n, clusters)[self.rows]
        if not 2 <= len(np.unique(labels)) <= len(labels) - 1:
            return 0.0
        with sklearn.config_context(working_memory=64):
            return float(silhouette_score(self.dist, labels, metric="precomputed"))


def silhouette(vectors: np.ndarray, clusters: list[list[int]]) -> float:
    """Mean silhouette (cosine distance) of a clustering (see `_Silhouette`)."""
    if len(clusters) < 2 or len(vectors) < 3:
        return 0.0
    return _Silhouette(vectors)(clusters)


def contiguous_segments(vectors: np.ndarray, max_segments: int = 12) -> list[list[int]]:
    """Splits vectors in time order into contiguous chapters (adjacent Ward merges; the number
    of chapters by best silhouette)."""
    n = len(vectors)
    if n < 3:
        return [list(range(n))] if n else []
    x = _unit(vectors).astype(np.float64)
    starts = list(range(n))  # first row of each segment
    sums, sizes = [x[i].copy() for i in range(n)], [1] * n

    def cost(a: int) -> float:
        ca, cb = sums[a] / sizes[a], sums[a + 1] / sizes[a + 1]
        return sizes[a] * sizes[a + 1] / (sizes[a] + sizes[a + 1]) * float(((ca - cb) ** 2).sum())

    costs = [cost(a) for a in range(n - 1)]
    candidates: dict[int, list[int]] = {}
    while len(starts) > 1:
        if len(starts) <= max_segments:
            candidates[len(starts)] = list(starts)
        a = int(np.argmin(costs))
        sums[a] = sums[a] + sums[a + 1]
        sizes[a] += sizes[a + 1]
        del starts[a + 1], sums[a + 1], sizes[a + 1], costs[a]
        for b in (a - 1, a):
            if 0 <= b < len(costs):
                costs[b] = cost(b)

    def segments(bounds: list[int]) -> list[list[int]]:
        return [list(range(s, e)) for s, e in zip(bounds, bounds[1:] + [n])]

    best, best_score = [list(range(n))], 0.0
    score_of = _Silhouette(x)
    for count in sorted(candidates):
        if 2 <= count < n:
            score = score_of(segments(candidates[count]))
            if score > best_score + 1e-9:
                best, best_score = segments(candidates[count]), score
    return best


# -- selection -----------------------------------------------------------------------------------
def _drop_blurry(candidates: list[Candidate]) -> list[Candidate]:
    """Marks blurry candidates (judged against the non-blank ones around them); returns them."""
    judged = [c for c in candidates if blank_reason(c.quality) is None]
    sharp = [c.quality.sharpness for c in judged]
    out = []
    for i, (c, is_blurry) in enumerate(zip(judged, blurry(sharp))):
        if is_blurry:
            c.status, c.reason = "blurry", "blurry"
            c.detail = {"sharpness": round(c.quality.sharpness, 2),
                        "local_median_sharpness": round(local_median(sharp, i), 2)}
            out.append(c)
    return out


def _typical_sharpest(members: list[Candidate], x: np.ndarray) -> Candidate:
    """The sharpest of a moment's typical frames: those at most the median distance from its
    centre (frames in the middle of a dissolve or a fast move are not typical)."""
    if len(members) <= 2:
        return max(members, key=lambda c: c.quality.sharpness)
    dist = 1.0 - x @ _unit(x.mean(0))
    typical = [c for c, d in zip(members, dist) if d <= np.median(dist) + 1e-12]
    return max(typical, key=lambda c: c.quality.sharpness)


def _select_distinct(candidates: list[Candidate], x: np.ndarray, threshold: float,
                     keep_repeats: bool) -> list[Candidate]:
    kept: list[Candidate] = []
    d_in, _ = neighbour_distances(x, [c.shot for c in candidates])
    usual = float(np.median(d_in)) if len(d_in) else 0.0
    everywhere = _NearestKept(x.shape[1])
    for rows in _shot_groups([c.shot for c in candidates]):
        shot = candidates[rows[0]].shot
        earlier = _NearestKept(x.shape[1]) if keep_repeats else everywhere
        for moment, start_dist in segment_moments(x[rows], threshold, usual):
            members = [candidates[rows[j]] for j in moment]
            best = _typical_sharpest(members, x[[rows[j] for j in moment]])
            best_unit = x[rows[moment[members.index(best)]]]
            if start_dist is not None:
                why = (f"new moment in shot {shot}: the picture changed by {start_dist:.4f} "
                       f"(threshold {threshold:.4f})")
            else:
                why = f"first moment of shot {shot}"
            best.status = "kept"
            best.reason = why + (f"; sharpest of {len(members)} near-duplicates" if len(members) > 1 else "")
            best.detail = {"moment_frames": len(members)}
            dists = np.clip(1.0 - x[[rows[j] for j in moment]] @ best_unit, 0.0, 2.0)
            for c, d in zip(members, dists):
                if c is not best:
                    c.status, c.reason = "duplicate", "near-duplicate"
                    c.detail = {"distance": round(float(d), 6), "_of": best}
            # a picture already kept is a repeat (or, in the same shot, a duplicate), not a new keyframe
            found = earlier.nearest(best_unit)
            if found is not None and found[1] <= threshold:
                same, dist = found
                if same.shot == shot:
                    best.status, best.reason = "duplicate", "near-duplicate"
                else:
                    best.status, best.reason = "repeat", "repeat of a keyframe of an earlier shot"
                best.detail = {"distance": round(dist, 6), "_of": same}
                for c in members:
                    if c.status == "duplicate":
                        c.detail["_of"] = same
                continue
            kept.append(best)
            earlier.add(best, best_unit)
    return kept


def _select_clusters(candidates: list[Candidate], x: np.ndarray, clusters: list[list[int]]) -> list[Candidate]:
    chosen = []
    for members in clusters:
        sims = x[members] @ _unit(x[members].mean(0))
        chosen.append((members[int(np.argmax(sims))], members))
    chosen.sort()  # number clusters in time order of their keyframes
    kept = []
    for n, (row, members) in enumerate(chosen):
        best = candidates[row]
        shots = sorted({candidates[i].shot for i in members})
        best.status = "kept"
        best.reason = f"nearest the centre of cluster {n} ({len(members)} frames, shot{'s' if len(shots) > 1 else ''} " \
                      f"{', '.join(map(str, shots))})"
        best.detail = {"cluster": n, "cluster_frames": len(members)}
        for i in members:
            c = candidates[i]
            if c is not best:
                c.status, c.reason = "duplicate", "in the cluster of a keyframe"
                c.detail = {"cluster": n, "distance": round(float(max(0.0, 1.0 - x[i] @ x[row])), 6), "_of": best}
        kept.append(best)
    return kept


def _choose_clusters(x: np.ndarray, shots: list[int], options: KeyframeOptions,
                     repeat_t: float | None) -> tuple[list[list[int]], dict[str, Any]]:
    """The clusters of count mode (with --count auto, the K of best silhouette)."""
    if len(x) == 0:
        return [], {}
    if not options.auto_count:
        return scene_clusters(x, shots, options.count or 1, repeat_t), {}
    hi = min(options.max_count, max(1, len(x) - 1))
    ks = list(range(min(options.min_count, hi), hi + 1))
    scores: dict[int, float] = {}
    best: tuple[float, list[list[int]]] | None = None
    score_of = _Silhouette(x)
    for k, clusters in sorted(cluster_path(x, shots, ks, repeat_t).items()):
        scores[k] = round(score_of(clusters), 6)
        if best is None or scores[k] > best[0] + 1e-9:
            best = (scores[k], clusters)
    clusters = best[1] if best else scene_clusters(x, shots, options.min_count, repeat_t)
    return clusters, {"count_chosen_by": {"criterion": "silhouette (cosine)", "scores": scores}}


def _chapters(kept: list[Candidate], scenes: list[Scene]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Chapters over the kept frames, and each kept frame's chapter (by id)."""
    chapter_of: dict[int, int] = {}
    out: list[dict[str, Any]] = []
    if not kept:
        return out, chapter_of
    for n, seg in enumerate(contiguous_segments(np.stack([c.vector for c in kept]))):
        first, last = kept[seg[0]], kept[seg[-1]]
        start = scenes[first.scene].start_time if n else 0.0
        for i in seg:
            chapter_of[id(kept[i])] = n
        out.append({"index": n, "start": round(start, 6), "start_timecode": format_time(start),
                    "first_keyframe_time": round(first.time, 6), "last_keyframe_time": round(last.time, 6),
                    "keyframes": len(seg)})
    for n in range(len(out) - 1):
        out[n]["end"] = out[n + 1]["start"]
    out[-1]["end"] = round(scenes[-1].end_time, 6)
    return out, chapter_of


@dataclass
class Selection:
    kept: list[Candidate]  # time order
    candidates: list[Candidate]  # the judged ones (not blank or blurry), time order
    dropped: list[Candidate]  # every other candidate
    manifest: dict[str, Any]  # what the selection says about itself
    chapter_of: dict[int, int] = field(default_factory=dict)  # id(kept frame) -> chapter


def select_keyframes(candidates: list[Candidate], dropped: list[Candidate], scenes: list[Scene],
                     options: KeyframeOptions) -> Selection:
    """Blur, threshold, moments or clusters, chapters: which candidates become keyframes."""
    dropped = list(dropped)
    if options.blur_filter:
        dropped += _drop_blurry(candidates)
        candidates = [c for c in candidates if c.status != "blurry"]
    x = _unit(np.stack([c.vector for c in candidates])) if candidates else np.zeros((0, 1), np.float32)
    shots = [c.shot for c in candidates]
    threshold, threshold_info = adaptive_threshold(*neighbour_distances(x, shots))
    manifest: dict[str, Any] = {
        "threshold": {"distance": round(threshold, 6), "similarity": round(1 - threshold, 6)} | threshold_info,
    }
    if options.count is None and not options.auto_count:
        manifest["mode"] = "distinct"
        kept = _select_distinct(candidates, x, threshold, options.keep_repeats)
    else:
        manifest["mode"] = "count"
        clusters, info = _choose_clusters(x, shots, options, None if options.keep_repeats else threshold)
        kept = _select_clusters(candidates, x, clusters)
        manifest |= info | {"count": len(clusters)}
    kept.sort(key=lambda c: c.index)
    dropped += [c for c in candidates if c.status != "kept"]
    selection = Selection(kept, candidates, dropped, manifest)
    if options.chapters:
        manifest["chapters"], selection.chapter_of = _chapters(kept, scenes)
    return selection


# -- the analysis pass ---------------------------------------------------------------------------
class _CandidateTap:
    """Keyframes' tap on the analysis pass: a candidate every `step` seconds (none inside
    `dense` frame ranges), measured, dropped if blank, else written to `spill_dir` and embedded."""

    def __init__(self, options: KeyframeOptions, spill_dir: Path, dense: list[tuple[int, int]]) -> None:
        self.options = options
        self.spill_dir = spill_dir
        self.dense = sorted(dense)
        self.candidates: list[Candidate] = []
        self.dropped: list[Candidate] = []
        self._next_time = 0.0
        self._quality_size: tuple[int, int] | None = None

    def wants(self, frame: Frame) -> bool:
        if frame.time + 1e-6 < self._next_time:
            return False
        while self._next_time <= frame.time + 1e-6:
            self._next_time += self.options.step
        k = bisect.bisect_right(self.dense, (frame.index, float("inf"))) - 1
        return not (k >= 0 and self.dense[k][0] <= frame.index < self.dense[k][1])

    def picture(self, frame: Frame, rgb: np.ndarray) -> bool:
        av_frame = frame.av_frame
        if self._quality_size is None:
            self._quality_size = detect_size(max(2, av_frame.width), max(2, av_frame.height), QUALITY_WIDTH)
        cand = Candidate(frame.index, frame.time, measure(small_bgr(av_frame, self._quality_size)))
        reason = blank_reason(cand.quality) if self.options.blank_filter else None
        if reason is not None:
            cand.status, cand.reason = "blank", reason
            self.dropped.append(cand)
            return False
        cand.spill = self.spill_dir / f"{frame.index:08d}.{self.options.image_format}"
        cand.spill.write_bytes(_encode(rgb, self.options.image_format))
        self.candidates.append(cand)
        return True


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UsageError(f"cannot encode a {fmt} image")
    return buf.tobytes()


def recorded_views(settings: str) -> str:
    """The views a video's recorded settings name ("centre" for records made before views)."""
    try:
        return str(json.loads(settings).get("views", "centre")) if settings else "centre"
    except (ValueError, AttributeError):
        return "centre"


def _from_index(video: Path, index_dir: Path | None, identity: str, step: float,
                views: str | None) -> tuple[KnownScenes, list[tuple[int, int]], str] | None:
    """The index's scenes and sample vectors for `video` (a `KnownScenes`: each sample's whole
    picture, the mean of its views), the frame ranges of scenes whose samples alone are about as
    dense as `step`, and the views they were made with; None if not usable (or other views)."""
    if index_dir is None:
        return None
    from cliptool.analysis.analyse import KnownScenes
    from cliptool.store import IndexStore, video_id_for

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
            made_with = recorded_views(record.settings)
            if views is not None and views != made_with:
                return None
            scene_records = store.scenes(record)
            vectors = store.vectors(record)
    except Exception:  # an index we cannot read is only a missed shortcut
        return None
    if not scene_records or len(vectors) != len(scene_records):
        return None
    by_frame: dict[int, np.ndarray] = {}
    dense = []
    for s, v in zip(scene_records, vectors):
        per = per_sample(len(v.frames), len(s.sample_frames))
        if per * len(s.sample_frames) != len(v.frames):
            return None  # rows that are not whole samples' views
        for i, frame_no in enumerate(s.sample_frames):
            by_frame[int(frame_no)] = whole(np.asarray(v.frames[i * per:(i + 1) * per], dtype=np.float32))
        if s.sample_frames and (s.end_time - s.start_time) / len(s.sample_frames) <= step * 1.5:
            dense.append((s.start_frame, s.end_frame))
    return KnownScenes(scene_records, by_frame), dense, made_with


class _ModelOnUse:
    """Stands for the ClipModel in the analysis pass and loads it on its first use, so a video
    whose vectors all come from the index never loads it."""

    def __init__(self, get_model: Callable[[], ClipModel]) -> None:
        self._get_model = get_model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_model(), name)


def _analyse(video: Path, model: ClipModel, options: KeyframeOptions, spill_dir: Path,
             indexed: tuple[KnownScenes, list[tuple[int, int]]] | None,
             progress: bool | None) -> tuple[AnalysedVideo, list[Scene], _CandidateTap]:
    """Runs the analysis pass with the candidate tap; gives candidates their scene, shot and vector."""
    from tqdm import tqdm

    from cliptool.analysis.analyse import ModelLoadError, analyse_video

    known, dense = indexed if indexed is not None else (None, [])
    tap = _CandidateTap(options, spill_dir, dense)
    with VideoReader(video) as reader:
        duration = reader.info.duration
    bar = tqdm(total=round(duration, 1) if duration > 0 else None, unit="s", desc=f"keyframes {video.name[-30:]}",
               file=sys.stderr, disable=True if progress is False else None, leave=False,
               bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s")

    def on_frame(t: float) -> None:
        bar.update(max(0.0, round(t, 1) - bar.n))

    try:
        analysed = analyse_video(video, model, options.analysis(), on_frame=on_frame, tap=tap, known=known)
    except ModelLoadError as exc:  # loaded on first use, in the embedding thread: the model's error
        raise ModelUnavailableError(str(exc)) from None
    finally:
        bar.close()
    scenes, shot = [], -1
    for i, (s, cont) in enumerate(zip(analysed.scenes, analysed.continues_shot)):
        shot += 0 if cont and i else 1
        scenes.append(Scene(i, s.start_frame, s.end_frame, s.start_time, s.end_time, shot))
    starts = [s.start_frame for s in scenes]
    known_vectors = known.vectors if known is not None else {}
    tap.candidates.sort(key=lambda c: c.index)
    for cand in tap.candidates + tap.dropped:
        cand.scene = max(0, bisect.bisect_right(starts, cand.index) - 1)
        cand.shot = scenes[cand.scene].shot if scenes else 0
    for cand in tap.candidates:
        if cand.index in known_vectors:
            cand.vector, cand.from_index = known_vectors[cand.index], True
        else:
            cand.vector = analysed.frame_vectors[cand.index]
    return analysed, scenes, tap


# -- output --------------------------------------------------------------------------------------
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


def _write_keyframes(out_dir: Path, sel: Selection, options: KeyframeOptions) -> list[dict[str, Any]]:
    """Moves the kept images into place (first removing a previous run's); their manifest entries."""
    _clean_previous(out_dir)
    repeats: dict[int, list[dict[str, Any]]] = {}
    for o in sel.dropped:
        if o.status == "repeat":
            repeats.setdefault(id(o.detail["_of"]), []).append({"time": round(o.time, 6), "frame": o.index,
                                                                "scene": o.scene})
    out = []
    for n, c in enumerate(sel.kept):
        name = _file_name(n, c.time, options.image_format)
        os.replace(c.spill, out_dir / name)
        entry = {"file": name, "time": round(c.time, 6), "timecode": format_time(c.time), "frame": c.index,
                 "scene": c.scene, "reason": c.reason} | c.detail
        entry["quality"] = c.quality.to_dict()
        entry["embedding"] = "index" if c.from_index else "decoded"
        if options.chapters:
            entry["chapter"] = sel.chapter_of.get(id(c))
        if id(c) in repeats:
            entry["repeats"] = sorted(repeats[id(c)], key=lambda r: r["frame"])
        out.append(entry)
    return out


def _dropped_entries(sel: Selection, files: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for c in sorted(sel.dropped, key=lambda c: c.index):
        entry = {"time": round(c.time, 6), "timecode": format_time(c.time), "frame": c.index, "scene": c.scene,
                 "reason": c.reason}
        of = c.detail.get("_of")
        if of is not None and id(of) in files:
            entry["same_as"] = files[id(of)]
        entry |= {k: v for k, v in c.detail.items() if not k.startswith("_")}
        if c.status == "blank":
            entry["quality"] = c.quality.to_dict()
        out.append(entry)
    return out


def _manifest(sel: Selection, scenes: list[Scene], keyframes: list[dict[str, Any]], options: KeyframeOptions,
              used_index: bool) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "source": "index scenes and vectors + decoded frames" if used_index else "decoded",
        "detector": "index" if used_index else options.detector,
        "step": round(options.step, 6),
        "views": options.views or DEFAULT_VIEWS,
        "threshold": sel.manifest["threshold"],
        "quality": {
            "blank_filter": options.blank_filter, "blur_filter": options.blur_filter,
            "rules": "black: 99th luma percentile <= 40; white: 1st percentile >= 225; solid colour: "
                     "luma std < 6; low detail: < 0.2% edge pixels (Sobel magnitude > 32), all on a "
                     "256-pixel-wide copy; blurry: variance of Laplacian < 0.3x the median of the 6 candidates each side",
        },
    }
    manifest |= {k: v for k, v in sel.manifest.items() if k not in ("threshold", "chapters")}
    manifest["scenes"] = [{"index": s.index, "start": round(s.start_time, 6), "end": round(s.end_time, 6),
                           "start_frame": s.start_frame, "end_frame": s.end_frame, "shot": s.shot} for s in scenes]
    manifest["keyframes"] = keyframes
    if options.chapters:
        manifest["chapters"] = sel.manifest.get("chapters", [])
    files = {id(c): k["file"] for c, k in zip(sel.kept, keyframes)}
    manifest["dropped"] = _dropped_entries(sel, files)
    every = sel.candidates + sel.dropped
    manifest["counts"] = {
        "candidates": len(sel.candidates) + sum(1 for c in sel.dropped if c.status in ("blank", "blurry")),
        "kept": len(sel.kept),
        "embedded": sum(1 for c in every if c.vector is not None and not c.from_index),
        "from_index": sum(1 for c in every if c.from_index),
        **{s: sum(1 for c in sel.dropped if c.status == s) for s in ("duplicate", "repeat", "blank", "blurry")},
    }
    return manifest


def extract_keyframes(
    video: Path,
    out_dir: Path,
    get_model: Callable[[], ClipModel],
    identity: str,
    options: KeyframeOptions | None = None,
    index_dir: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Writes the keyframes of `video` and `manifest.json` into `out_dir`; returns the manifest.

    `get_model` returns the ClipModel, called only when a picture must be embedded; `identity`
    is that model's identity, used to decide whether the index's vectors can be reused.
    """
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

    found = _from_index(video.absolute(), index_dir, identity, options.step, options.views) if options.use_index else None
    indexed = found[:2] if found is not None else None
    if found is not None:
        options = replace(options, views=found[2])
    spill_dir = out_dir / f".keyframes-tmp-{os.getpid()}"
    spill_dir.mkdir(exist_ok=True)
    try:
        model = cast("ClipModel", _ModelOnUse(get_model))
        analysed, scenes, tap = _analyse(video, model, options, spill_dir, indexed, progress)
        selection = select_keyframes(tap.candidates, tap.dropped, scenes, options)
        keyframes = _write_keyframes(out_dir, selection, options)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    info = analysed.info
    manifest = {"video": str(video), "width": info.width, "height": info.height, "fps": round(info.fps, 6),
                "frames": analysed.frame_count, "duration": round(analysed.duration, 6)}
    manifest |= _manifest(selection, scenes, keyframes, options, indexed is not None)
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    tmp.replace(out_dir / MANIFEST)
    return manifest
