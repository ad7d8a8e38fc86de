"""What every request of one app shares: the index, its lock, and caches of records and frames.

One `cliptool.Index` (and so one searcher) serves every request, guarded by one lock: the
searcher is brought up to date on each query (`Searcher.refresh`), and the stores are opened
only briefly, by one thread at a time, with the store's own retry while an index run holds them.
Video records are cached per index generation. Everything a request names is an id looked up
here (a video id, a scene id); no path is ever taken from a request.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cliptool.analysis import thumbnails
from cliptool.api import Index
from cliptool.errors import IndexMissingError
from cliptool.store import IndexStore, SceneRecord, VideoRecord, generation
from cliptool.serve import media
from cliptool.serve.errors import ApiError
from cliptool.serve.security import is_loopback

UPLOAD_LIMIT = 20 * 1024 * 1024
CACHED_SCENES = 500_000  # scenes kept in memory between requests (~150 bytes each)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Scene:
    """What a request needs of a scene, small: 100k of them take ~15 MB, not SceneRecord's ~70."""

    __slots__ = ("scene_id", "index", "start_time", "end_time", "sample_times")

    def __init__(self, s: SceneRecord) -> None:
        self.scene_id, self.index = s.scene_id, s.index
        self.start_time, self.end_time = s.start_time, s.end_time
        self.sample_times = tuple(s.sample_times)


class ServeState:
    """What every request shares: the index, its lock, caches of records and frames."""

    def __init__(self, index_dir: Path, *, host: str, port: int, token: str | None) -> None:
        self.index_dir = Path(index_dir)
        self.index = Index.open(self.index_dir, text_runtime="onnxruntime")
        self.host, self.port, self.token = host, port, token
        self.loopback = is_loopback(host)
        self.lock = threading.RLock()
        # video id -> (generation, record, scenes), least recently used first, at most
        # CACHED_SCENES scenes in all (a long video has thousands)
        self._videos: OrderedDict[str, tuple[str, VideoRecord | None, list[_Scene]]] = OrderedDict()
        self._cached_scenes = 0
        self._status: tuple[str, float, dict[str, Any]] | None = None
        self._library: tuple[str, list[VideoRecord]] | None = None
        self._frames: OrderedDict[tuple[str, str, float], bytes] = OrderedDict()
        self._frames_lock = threading.Lock()
        self.decoding = threading.BoundedSemaphore(2)  # frames decoded at once (thumbnails made on request)

    # -- records ---------------------------------------------------------------------------------
    def video(self, video_id: str) -> tuple[VideoRecord, list[_Scene]]:
        """An indexed video's record and scenes (cached until the next commit); 404 if none."""
        if not _ID.match(video_id or ""):
            raise ApiError(404, "no such video")
        gen = generation(self.index_dir)
        cached = self._videos.get(video_id)
        if cached is None or cached[0] != gen:
            with self.lock:
                gen = generation(self.index_dir)
                try:
                    with IndexStore(self.index_dir) as store:
                        record = store.get_video(video_id)
                        scenes = [_Scene(x) for x in store.scenes(record)] if record is not None else []
                except IndexMissingError:
                    record, scenes = None, []
                old = self._videos.pop(video_id, None)
                self._cached_scenes -= len(old[2]) if old else 0
                self._videos[video_id] = cached = (gen, record, scenes)
                self._cached_scenes += len(scenes)
                while (self._cached_scenes > CACHED_SCENES or len(self._videos) > 4096) and len(self._videos) > 1:
                    _, (_, _, dropped) = self._videos.popitem(last=False)
                    self._cached_scenes -= len(dropped)
        else:
            with self.lock:
                if video_id in self._videos:
                    self._videos.move_to_end(video_id)
        if cached[1] is None:
            raise ApiError(404, "no such video")
        return cached[1], cached[2]

    def scene(self, scene_id: str) -> tuple[VideoRecord, _Scene]:
        parts = (scene_id or "").split("/")
        if len(parts) != 3 or not all(_ID.match(p) for p in parts) or not parts[2].isdigit():
            raise ApiError(404, "no such scene")
        record, scenes = self.video(parts[0])
        number = int(parts[2])
        if number >= len(scenes) or scenes[number].scene_id != scene_id:
            raise ApiError(404, "no such scene (re-indexed since? search again)")
        return record, scenes[number]

    def library(self) -> list[VideoRecord]:
        """Every indexed video's record, newest file date first (then by path); read once per
        index generation; empty before anything was indexed."""
        gen = generation(self.index_dir)
        cached = self._library
        if cached is not None and cached[0] == gen:
            return cached[1]
        with self.lock:
            gen = generation(self.index_dir)
            try:
                records = self.index.videos()
            except IndexMissingError:
                records = []
            records.sort(key=lambda r: -r.mtime)  # stable: by path within one date
            self._library = (gen, records)
        return records

    # -- JSON shapes -----------------------------------------------------------------------------
    def scene_json(self, scene_id: str) -> dict[str, Any]:
        """An indexed scene as the page shows what it searched with: its video, span and
        middle thumbnail; 404 unless it is an indexed scene."""
        record, scene = self.scene(scene_id)
        k = len(scene.sample_times) // 2
        return {"scene_id": scene.scene_id, "scene_index": scene.index, "video_id": record.video_id,
                "name": os.path.basename(record.path), "path": record.path, "start": scene.start_time,
                "end": scene.end_time, "duration": record.duration,
                "thumbnail": _thumb_url(scene.scene_id, k) if scene.sample_times else None}

    def library_json(self, record: VideoRecord, scenes: list[_Scene], most: int) -> dict[str, Any]:
        """A video as the library lists it: its facts and at most `most` of its scenes, spread
        evenly over the video (first and last included), each with its middle thumbnail."""
        if most <= 0 or not scenes:
            picked: list[_Scene] = []
        elif len(scenes) <= most:
            picked = scenes
        elif most == 1:
            picked = scenes[:1]
        else:
            picked = [scenes[round(i * (len(scenes) - 1) / (most - 1))] for i in range(most)]
        return {
            "video_id": record.video_id, "name": os.path.basename(record.path), "path": record.path,
            "folder": os.path.dirname(record.path), "duration": record.duration, "mtime": record.mtime,
            "indexed_at": record.indexed_at, "width": record.width, "height": record.height,
            "codec": record.codec, "scene_count": len(scenes), "media": f"/media/{record.video_id}",
            "type": media.browser_type(record.path, record.codec),
            "scenes": [{"scene_id": s.scene_id, "scene_index": s.index, "start": s.start_time, "end": s.end_time,
                        "best_time": s.sample_times[len(s.sample_times) // 2] if s.sample_times else s.start_time,
                        "thumbnail": _thumb_url(s.scene_id, len(s.sample_times) // 2) if s.sample_times else None,
                        "frames": [_thumb_url(s.scene_id, k) for k in range(len(s.sample_times))],
                        "sample_times": s.sample_times}
                       for s in picked],
        }

    def hit_json(self, hit: Any) -> dict[str, Any]:
        d = hit.to_dict()
        d["name"] = os.path.basename(hit.path)
        d["media"] = f"/media/{hit.video_id}#t={hit.start:.3f},{hit.end:.3f}"
        try:
            record, scene = self.scene(hit.scene_id)
        except ApiError:
            d.update(thumbnail=None, frames=[], sample_times=[], type=None, duration=None)
            return d
        frames = [_thumb_url(scene.scene_id, k) for k in range(len(scene.sample_times))]
        d["thumbnail"] = frames[_nearest(scene.sample_times, hit.best_time)] if frames else None
        d["frames"] = frames
        d["sample_times"] = scene.sample_times
        d["type"] = media.browser_type(record.path, record.codec)
        d["duration"] = record.duration
        return d

    def video_json(self, record: VideoRecord, scenes: list[SceneRecord]) -> dict[str, Any]:
        rec = {k: getattr(record, k) for k in ("video_id", "path", "size", "mtime", "duration", "fps", "width",
                                                "height", "frame_count", "scene_count", "codec", "model",
                                                "indexed_at", "version")}
        return {
            "video": rec, "name": os.path.basename(record.path), "media": f"/media/{record.video_id}",
            "type": media.browser_type(record.path, record.codec),
            "scenes": [{"scene_id": s.scene_id, "scene_index": s.index, "start": s.start_time, "end": s.end_time,
                        "start_frame": s.start_frame, "end_frame": s.end_frame, "sample_times": s.sample_times,
                        "thumbnail": _thumb_url(s.scene_id, len(s.sample_times) // 2) if s.sample_times else None,
                        "frames": [_thumb_url(s.scene_id, k) for k in range(len(s.sample_times))]}
                       for s in scenes],
        }

    def status(self) -> dict[str, Any]:
        gen = generation(self.index_dir)
        now = time.monotonic()
        if self._status is not None and self._status[0] == gen and now - self._status[1] < 2.0:
            return self._status[2]
        with self.lock:
            try:
                info = self.index.status()
                info["missing"] = False
            except IndexMissingError:
                info = {"index_dir": str(self.index_dir), "model": None, "videos": 0, "scenes": 0, "hours": 0.0,
                        "cache": "missing", "missing": True}
        info["generation"] = gen
        info["server"] = {"loopback": self.loopback, "open_player": self.loopback, "token": self.token is not None,
                          "upload_limit": UPLOAD_LIMIT}
        self._status = (gen, now, info)
        return info

    # -- pictures --------------------------------------------------------------------------------
    def thumbnail(self, scene_id: str, k: int) -> bytes:
        record, scene = self.scene(scene_id)
        if not 0 <= k < len(scene.sample_times):
            raise ApiError(404, "no such thumbnail")
        data = thumbnails.read(self.index_dir, scene_id, k)
        if data is not None:
            return data
        with self.decoding:
            return thumbnails.make(self.index_dir, record, scene, k)

    def frame(self, video_id: str, t: float) -> bytes:
        record, _ = self.video(video_id)
        if not (t >= 0 and t <= max(record.duration, 0.0) + 1.0):
            raise ApiError(400, f"t must be between 0 and the video's duration ({record.duration:.3f} s)")
        key = (video_id, record.version, round(t, 3))
        with self._frames_lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        from cliptool.media.decode import frame_at

        with self.decoding:
            _, rgb = frame_at(Path(record.path), t)
        data = thumbnails.encode(rgb)
        with self._frames_lock:
            self._frames[key] = data
            while len(self._frames) > 512:
                self._frames.popitem(last=False)
        return data


def _thumb_url(scene_id: str, k: int) -> str:
    return f"/thumb/{scene_id}/{k}.jpg"


def _nearest(times: list[float], t: float) -> int:
    return min(range(len(times)), key=lambda i: abs(times[i] - t)) if times else 0
