"""What a search opens: the cache's segments, with the videos committed since laid over them in
memory and the rows retired since hidden (`LiveIndex`); `check`'s comparison with the stores."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.errors import CliptoolError, one_line
from cliptool.store import IndexStore, VideoRecord, generation
from cliptool.vectors.base import ScenePosition, row_times, VideoFilter
from cliptool.vectors.faiss.approx import VECTOR_INDEX_ENV
from cliptool.vectors.faiss.manifest import (
    cache_root,
    cache_state,
    live_map,
    read_manifest,
    retired_mask,
)
from cliptool.vectors.faiss.segment import (
    LOAD_ATTEMPTS,
    VectorIndex,
    numbered_videos,
    open_segment,
    top,
)
from cliptool.vectors.faiss.sync import sync_cache

_OVERLAY_LIMIT = 2_000  # scenes committed since the cache that a search lays over it in memory


# -- what a search loads ---------------------------------------------------------------------------
def load_vector_index(index_dir: Path) -> VectorIndex | LiveIndex:
    """What a search needs for `index_dir`: the cache's segments, with whatever was committed
    since the cache was brought in line laid over them; the first build when there is none."""
    index_dir = Path(index_dir)
    root = cache_root(index_dir)
    unreadable: set[tuple[str, ...]] = set()
    why = ""
    for _ in range(LOAD_ATTEMPTS):
        damage: list[str] = []
        manifest = read_manifest(index_dir, damage)
        token = generation(index_dir)
        if manifest is None:
            if damage:
                _say_rebuilt(damage[0])
            sync_cache(index_dir, rebuild_all=bool(damage))  # no cache yet (raises when the index holds nothing)
            continue
        names = tuple(s["name"] for s in manifest["segments"])
        try:
            segments = [open_segment(root / s["name"], s.get("files")) for s in manifest["segments"]]
        except (OSError, ValueError, RuntimeError) as exc:
            why = one_line(exc)
            if names in unreadable:  # damaged, not just replaced as we opened it: build anew
                _say_rebuilt(why)
                sync_cache(index_dir, rebuild_all=True)
            else:
                unreadable.add(names)
                time.sleep(0.05)
            continue
        current = manifest.get("generation") == token
        if current and len(segments) == 1 and not manifest["segments"][0].get("retired"):
            return segments[0]
        live = _live_index(index_dir, manifest, segments, stale=not current)
        if live is not None:
            return live
        done = sync_cache(index_dir)  # much committed since: appended to the cache (no rebuild from scratch)
        if done.damaged:
            _say_rebuilt(done.damaged)
    raise CliptoolError(f"cannot read the search cache at {root} ({why or 'it keeps changing'}); "
                        "run `cliptool check --repair`")


def _say_rebuilt(why: str) -> None:
    """The one line a search says when it finds the cache damaged (it is never served)."""
    import sys

    print(f"cliptool: {why}; the search cache is rebuilt from the stores", file=sys.stderr)


def _live_index(index_dir: Path, manifest: dict[str, Any], segments: list[VectorIndex], stale: bool) -> LiveIndex | None:
    """The segments with their retired rows hidden and, when the stores moved on since the
    manifest (stale), the videos committed since laid over them; None when that is too much."""
    retired = [retired_mask(e, s) for e, s in zip(manifest["segments"], segments)]
    overlay = _Overlay(sum(s.size for s in segments), np.zeros((0, int(manifest["dim"])), np.float32), [], [])
    videos = sum(len(s.videos) - len(e.get("retired", ())) for e, s in zip(manifest["segments"], segments))
    if stale:
        if any(s.video_states() is None for s in segments):
            return None
        live = live_map(manifest, segments)
        size = sum(s.size for s in segments)
        with IndexStore(index_dir) as store:
            meta = store.meta()
            if meta.get("model_identity") != manifest.get("model_identity"):
                return None
            records = list(store.videos())
            changed = [r for r in records if live.get(r.video_id, ("", "", -1, -1))[:2] != (r.version, r.path)]
            if sum(r.scene_count for r in changed) > max(_OVERLAY_LIMIT, size // 4):
                return None
            current = {(r.video_id, r.version, r.path) for r in records}
            gone = [(seg_no, vrow) for vid, (version, path, seg_no, vrow) in live.items()
                    if (vid, version, path) not in current]
            overlay = _Overlay.read(store, sorted(changed, key=lambda r: r.path), size, int(manifest["dim"]))
        for seg_no, vrow in gone:
            mask = segments[seg_no].rows_of_video_rows([vrow])
            retired[seg_no] = mask if retired[seg_no] is None else (retired[seg_no] | mask)
        videos = len(records)
    return LiveIndex(segments, retired, overlay, videos, manifest)


@dataclass
class _Overlay:
    """Scenes committed after the cache was last brought in line: their vectors and positions,
    rows after the segments'."""

    first_row: int
    scenes: np.ndarray  # (n, dim)
    frames: list[np.ndarray]
    positions: list[ScenePosition]

    @classmethod
    def read(cls, store: IndexStore, records: list[VideoRecord], first_row: int, dim: int) -> _Overlay:
        scenes, frames, positions = [], [], []
        for video in records:
            scene_list, vectors = store.scenes(video), store.vectors(video)
            for scene, vec in zip(scene_list, vectors):
                if vec.scene.shape[0] != dim:
                    continue
                positions.append(ScenePosition(
                    first_row + len(positions), scene.scene_id, video.video_id, video.path, scene.index,
                    scene.start_time, scene.end_time,
                    row_times(scene.sample_times, len(vec.frames), scene.start_time),
                    scene.continues_shot))
                scenes.append(vec.scene)
                frames.append(vec.frames)
        matrix = np.stack(scenes).astype(np.float32) if scenes else np.zeros((0, dim), np.float32)
        return cls(first_row, matrix, frames, positions)


class LiveIndex:
    """The cache's segments one after another (rows numbered across them), their retired rows
    hidden, and the scenes committed since laid after them. Answers like a VectorIndex."""

    def __init__(self, segments: list[VectorIndex], retired: list[np.ndarray | None], overlay: _Overlay,
                 videos: int, manifest: dict[str, Any] | None = None) -> None:
        self.segments = segments
        self.base = segments[0]
        self.offsets = np.cumsum([0] + [s.size for s in segments])
        self._retired_parts = retired
        self.retired = np.concatenate([r if r is not None else np.zeros(s.size, dtype=bool)
                                       for r, s in zip(retired, segments)]) if segments else np.zeros(0, bool)
        self.overlay = overlay
        self.hidden = int(self.retired.sum())
        self.meta = {**self.base.meta, "scenes": self.size, "videos": videos, "overlay": len(overlay.positions),
                     "retired": self.hidden, "segments": len(segments)}
        if manifest is not None:
            self.meta.update(model=manifest.get("model", self.base.meta.get("model")),
                             model_identity=manifest.get("model_identity", self.base.meta.get("model_identity")))

    @property
    def size(self) -> int:
        """Live scenes (the hidden rows of the segments not counted)."""
        return int(self.offsets[-1]) - self.hidden + len(self.overlay.positions)

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def model_spec(self) -> dict[str, str]:
        return self.meta["model"]

    def _is_new(self, row: int) -> bool:
        return row >= self.overlay.first_row

    def _where(self, row: int) -> tuple[VectorIndex, int]:
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.segments[i], row - int(self.offsets[i])

    def position(self, row: int) -> ScenePosition:
        if self._is_new(row):
            return self.overlay.positions[row - self.overlay.first_row]
        seg, local = self._where(row)
        pos = seg.position(local)
        pos.row = row
        return pos

    def frame_vectors(self, row: int) -> np.ndarray:
        if self._is_new(row):
            return self.overlay.frames[row - self.overlay.first_row]
        seg, local = self._where(row)
        return seg.frame_vectors(local)

    def scene_vector(self, row: int) -> np.ndarray:
        if self._is_new(row):
            return self.overlay.scenes[row - self.overlay.first_row]
        seg, local = self._where(row)
        return seg.scene_vector(local)

    def row_of_scene(self, scene_id: str) -> int | None:
        new = next((p.row for p in self.overlay.positions if p.scene_id == scene_id), None)
        if new is not None:
            return new
        for seg, off in zip(self.segments, self.offsets):
            row = seg.row_of_scene(scene_id)
            if row is not None and not self.retired[int(off) + row]:
                return int(off) + row
        return None

    def _masks(self, allowed: np.ndarray | None) -> list[np.ndarray | None]:
        """Each segment's mask of rows to search (None: all of them)."""
        masks: list[np.ndarray | None] = []
        for i, seg in enumerate(self.segments):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            mask = None if self._retired_parts[i] is None else ~self._retired_parts[i]
            if allowed is not None:
                part = np.asarray(allowed[a:b], dtype=bool)
                mask = part if mask is None else (mask & part)
            masks.append(mask)
        return masks

    def frame_candidates(self, query: np.ndarray, k: int, limit: int, allowed: np.ndarray | None = None) -> list[int]:
        """As VectorIndex.frame_candidates, hidden rows left out and the scenes committed since
        the cache was brought in line scanned too."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        found: list[tuple[float, int]] = []
        if sum(len(s.frames) for s in self.segments) <= limit:
            for seg, off, mask in zip(self.segments, self.offsets, self._masks(allowed)):
                found += [(score, int(off) + row) for score, row in seg._frame_hits(q, k, limit, mask)]
        for i, frames in enumerate(self.overlay.frames):
            row = self.overlay.first_row + i
            if len(frames) and (allowed is None or allowed[row]):
                found.append((float(np.max(np.asarray(frames, dtype=np.float32) @ q)), row))
        found.sort(key=lambda h: -h[0])
        return [row for _, row in found[:k]]

    def rows_of_video(self, video_id: str) -> np.ndarray:
        parts = []
        for seg, off in zip(self.segments, self.offsets):
            rows = seg.rows_of_video(video_id) + int(off)
            parts.append(rows[~self.retired[rows]])
        parts.append(np.asarray([p.row for p in self.overlay.positions if p.video_id == video_id], dtype=np.int64))
        return np.concatenate(parts).astype(np.int64)

    def scene_matrix(self) -> np.ndarray:
        """Every row's scene vector (hidden ones too), (size, dim), the overlay's after the segments'."""
        parts = [seg.scene_matrix() for seg in self.segments]
        parts.append(np.asarray(self.overlay.scenes, dtype=np.float32).reshape(-1, self.dim))
        return np.concatenate(parts)

    def video_of_rows(self) -> np.ndarray:
        """The video id of every row (hidden ones too), the overlay's after the segments'."""
        parts = [seg.video_of_rows() for seg in self.segments]
        parts.append(np.array([p.video_id for p in self.overlay.positions], dtype=str))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=str)

    def video_numbers(self) -> tuple[list[str], np.ndarray]:
        """As VectorIndex.video_numbers, over every row (hidden ones too), the overlay's after
        the segments': a video in several segments has one number."""
        return numbered_videos(self.segments, [p.video_id for p in self.overlay.positions])

    def row_videos(self) -> tuple[list[str], np.ndarray]:
        ids, column = self.video_numbers()  # a fresh array: hidden rows are marked in it
        hidden = np.asarray(self.retired, dtype=bool)  # rows of videos removed or replaced since
        column[: len(hidden)][hidden] = -1
        return ids, column

    def listed_videos(self) -> list[dict[str, Any]]:
        if self.overlay.positions:  # videos committed since the segments: the stores answer
            return []
        return [v for segment in self.segments for v in segment.videos]  # a later segment's entry wins

    def native_filter(self, where: VideoFilter) -> None:
        return None

    def scores(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows), best first, ties by row, as VectorIndex.scores; `allowed`: a
        boolean mask over rows (segments' and overlay's), or None."""
        all_scores, all_rows = [], []
        for seg, off, mask in zip(self.segments, self.offsets, self._masks(allowed)):
            s, r = seg.scores(query, k, mask)
            all_scores.append(s)
            all_rows.append(r.astype(np.int64) + int(off))
        if len(self.overlay.positions):
            new_scores = (self.overlay.scenes @ np.asarray(query, dtype=np.float32).reshape(-1)).astype(np.float32)
            new_rows = np.arange(len(new_scores), dtype=np.int64) + self.overlay.first_row
            if allowed is not None:
                ok = np.asarray(allowed[self.overlay.first_row:], dtype=bool)[: len(new_rows)]
                new_scores, new_rows = new_scores[ok], new_rows[ok]
            all_scores.append(new_scores)
            all_rows.append(new_rows)
        if not all_scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return top(np.concatenate(all_scores), np.concatenate(all_rows), k)

    def describe(self) -> dict[str, Any]:
        """The kind of the largest segment's index, and every segment's."""
        parts = [s.describe() for s in self.segments]
        main = max(parts, key=lambda p: p["rows"]) if parts else {"kind": "exact", "rows": 0}
        return {**main, "segments": parts}


def describe_cache(index_dir: Path) -> dict[str, Any]:
    """For `status`: the cache's state, segments, retired rows and kind of index (exact, or
    approximate with its factory string, nprobe and measured recall@10)."""
    manifest = read_manifest(index_dir)
    out: dict[str, Any] = {"state": cache_state(index_dir), "mode": os.environ.get(VECTOR_INDEX_ENV, "auto")}
    if manifest is None:
        return out
    root = cache_root(index_dir)
    segments = []
    for entry in manifest["segments"]:
        try:
            meta = json.loads((root / entry["name"] / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        approx = meta.get("approx")
        segments.append({"rows": entry["rows"], "retired_rows": entry.get("dead", 0),
                         "kind": "approximate" if approx else "exact", **({"approx": approx} if approx else {})})
    main = max(segments, key=lambda s: s["rows"])
    out.update(segments=len(segments), rows=sum(s["rows"] for s in segments),
               retired_rows=sum(s["retired_rows"] for s in segments), kind=main["kind"])
    if main.get("approx"):
        out["approx"] = main["approx"]
    out["segment_list"] = segments
    return out


def cached_video_paths(index_dir: Path) -> dict[str, str]:
    """video id -> path of every video the cache's segments list (their videos.json files that
    pass their checksums), for `check` to name videos the stores lost."""
    from cliptool import durable

    manifest = read_manifest(index_dir)
    paths: dict[str, str] = {}
    for entry in (manifest or {}).get("segments", []):
        folder = cache_root(index_dir) / entry["name"]
        checksum = (entry.get("files") or {}).get("videos.json")
        try:
            if checksum is None or durable.first_damaged(folder, {"videos.json": checksum}, full=True) is None:
                paths.update((v["video_id"], v["path"]) for v in json.loads((folder / "videos.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return paths


# -- one builder at a time ---------------------------------------------------------------------------
def cache_problems(index_dir: Path, expected: dict[str, np.ndarray], records: list[VideoRecord],
                    stale: bool = False) -> list[str]:
    """What is wrong with the live search cache (its segments, retired rows hidden), compared
    with the stores; of a stale cache (commits not yet appended), only the videos it agrees on
    with the stores are compared."""
    damage: list[str] = []
    manifest = read_manifest(index_dir, damage)
    if manifest is None:
        return damage
    root = cache_root(index_dir)
    try:
        segments = [open_segment(root / s["name"], s.get("files"), full=True) for s in manifest["segments"]]
        ids: list[str] = []
        wrong_vector = ""
        for entry, seg in zip(manifest["segments"], segments):
            hidden = retired_mask(entry, seg)
            mat = seg.scene_matrix()
            for row, sid in enumerate(seg.scene_ids()):
                if hidden is not None and hidden[row]:
                    continue
                ids.append(sid)
                if not wrong_vector and sid in expected and not np.allclose(mat[row], expected[sid], atol=1e-6):
                    wrong_vector = sid
        live = live_map(manifest, segments)
    except Exception as exc:  # noqa: BLE001 - any failure to load means a corrupt cache
        return [f"the search cache cannot be read ({one_line(exc) if isinstance(exc, ValueError) else type(exc).__name__})"]
    if stale:  # only the videos the cache and the stores agree on; a search lays the rest over it
        state = {r.video_id: (r.version, r.path) for r in records}
        same = {(vid, version) for vid, (version, path, _, _) in live.items() if state.get(vid) == (version, path)}

        def agreed(sid: str) -> bool:
            return tuple(sid.split("/")[:2]) in same

        ids = [sid for sid in ids if agreed(sid)]
        expected = {sid: v for sid, v in expected.items() if agreed(sid)}
    wrong = []
    if sorted(ids) != sorted(expected):
        wrong.append(f"the search cache lists {len(ids)} scenes, the stores hold {len(expected)} (or other ones)")
    elif wrong_vector:
        wrong.append(f"the search cache's vector for scene {wrong_vector} differs from the store's")
    cached_videos = sorted((vid, path) for vid, (_, path, _, _) in live.items())
    if not stale and cached_videos != sorted((r.video_id, r.path) for r in records):
        wrong.append("the search cache's video list differs from the stores'")
    return wrong
