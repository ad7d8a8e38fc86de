"""Stage 7: the FAISS index over all scene vectors, cached on disk and rebuilt when stale.

The cache lives in `<index dir>/faiss/<build>/` with `CURRENT` naming the live build:
`flat.faiss` (exact inner-product index), `frames.npy` (sample-frame vectors), `table.npz`
(FAISS row -> scene id, video, times) and `meta.json` (the generation token it was built from,
and the model). A build is written aside and switched in by replacing `CURRENT`, so a reader
never sees half a cache.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexMissingError
from .store import IndexStore, generation

CACHE_DIR = "faiss"


@dataclass
class ScenePosition:
    """Where a FAISS row points: one scene of one video."""

    row: int
    scene_id: str
    video_id: str
    path: str
    scene_index: int
    start_time: float
    end_time: float
    sample_times: list[float]


class VectorIndex:
    """A loaded cache: FAISS index plus the table that maps rows back to scenes."""

    def __init__(self, directory: Path) -> None:
        import faiss

        self.directory = directory
        self.meta: dict[str, Any] = json.loads((directory / "meta.json").read_text())
        self.faiss = faiss.read_index(str(directory / "flat.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        table = np.load(directory / "table.npz", allow_pickle=False)
        self._table = {k: table[k] for k in table.files}
        self.frames = np.load(directory / "frames.npy", mmap_mode="r")
        self.videos: list[dict[str, Any]] = json.loads((directory / "videos.json").read_text())

    @property
    def size(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    @property
    def model_spec(self) -> dict[str, str]:
        return self.meta["model"]

    def position(self, row: int) -> ScenePosition:
        t = self._table
        off, n = int(t["frame_offset"][row]), int(t["frame_count"][row])
        video = self.videos[int(t["video_row"][row])]
        return ScenePosition(
            row=row,
            scene_id=str(t["scene_id"][row]),
            video_id=video["video_id"],
            path=video["path"],
            scene_index=int(t["scene_index"][row]),
            start_time=float(t["start_time"][row]),
            end_time=float(t["end_time"][row]),
            sample_times=[float(x) for x in t["sample_times"][off : off + n]],
        )

    def frame_vectors(self, row: int) -> np.ndarray:
        t = self._table
        off, n = int(t["frame_offset"][row]), int(t["frame_count"][row])
        return np.asarray(self.frames[off : off + n], dtype=np.float32)

    def rows_of_video(self, video_id: str) -> np.ndarray:
        vrow = next((i for i, v in enumerate(self.videos) if v["video_id"] == video_id), None)
        if vrow is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._table["video_row"] == vrow)

    def scores(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) for one L2-normalised query vector."""
        k = max(1, min(k, self.size))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        scores, rows = self.faiss.search(q, k)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep]


def load_vector_index(index_dir: Path) -> VectorIndex:
    """The cache for `index_dir`, rebuilt first if the stores changed since it was built."""
    index_dir = Path(index_dir)
    for _ in range(3):
        current = _current_build(index_dir)
        token = generation(index_dir)
        if current is not None and _built_from(current) == token:
            try:
                return VectorIndex(current)
            except (OSError, ValueError, RuntimeError):
                pass  # replaced under us: build again
        rebuild(index_dir)
    return VectorIndex(_current_build(index_dir))  # type: ignore[arg-type]


def _cache_root(index_dir: Path) -> Path:
    return index_dir / CACHE_DIR


def _current_build(index_dir: Path) -> Path | None:
    try:
        name = (_cache_root(index_dir) / "CURRENT").read_text().strip()
    except OSError:
        return None
    path = _cache_root(index_dir) / name
    return path if name and (path / "meta.json").exists() else None


def _built_from(build: Path) -> str | None:
    try:
        return json.loads((build / "meta.json").read_text()).get("generation")
    except (OSError, ValueError):
        return None


def rebuild(index_dir: Path) -> Path:
    """Builds the cache from the stores and makes it current. Returns its directory."""
    import faiss

    index_dir = Path(index_dir)
    token = generation(index_dir)  # read before the stores: a later commit makes this build stale
    with IndexStore(index_dir) as store:
        meta = store.meta()
        records = sorted(store.videos(), key=lambda v: v.path)
        if not meta or not records:
            raise IndexMissingError(f"index at {index_dir} holds no videos yet; run `cliptool index FOLDER`")
        n_scenes = sum(v.scene_count for v in records)
        dim = None
        scene_mat: np.ndarray | None = None
        frame_chunks: list[np.ndarray] = []
        cols: dict[str, list[Any]] = {k: [] for k in (
            "scene_id", "video_row", "scene_index", "start_time", "end_time", "frame_offset", "frame_count")}
        sample_times: list[float] = []
        videos: list[dict[str, Any]] = []
        row = 0
        frame_off = 0
        for vrow, video in enumerate(records):
            videos.append({"video_id": video.video_id, "path": video.path, "duration": video.duration})
            scenes = store.scenes(video)
            vectors = store.vectors(video)
            for scene, vec in zip(scenes, vectors):
                if scene_mat is None:
                    dim = vec.scene.shape[0]
                    scene_mat = np.empty((n_scenes, dim), dtype=np.float32)
                scene_mat[row] = vec.scene
                frame_chunks.append(vec.frames)
                cols["scene_id"].append(scene.scene_id)
                cols["video_row"].append(vrow)
                cols["scene_index"].append(scene.index)
                cols["start_time"].append(scene.start_time)
                cols["end_time"].append(scene.end_time)
                cols["frame_offset"].append(frame_off)
                cols["frame_count"].append(len(vec.frames))
                sample_times.extend(scene.sample_times[: len(vec.frames)])
                sample_times.extend([scene.start_time] * (len(vec.frames) - len(scene.sample_times)))
                frame_off += len(vec.frames)
                row += 1
    if scene_mat is None or dim is None:
        raise IndexMissingError(f"index at {index_dir} holds no scenes yet; run `cliptool index FOLDER`")
    scene_mat = scene_mat[:row]
    root = _cache_root(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = secrets.token_hex(6)
    tmp = root / f"tmp-{name}"
    tmp.mkdir()
    flat = faiss.IndexFlatIP(dim)
    flat.add(scene_mat)
    faiss.write_index(flat, str(tmp / "flat.faiss"))
    del flat
    frames = np.concatenate(frame_chunks).astype(np.float32) if frame_chunks else np.zeros((0, dim), np.float32)
    np.save(tmp / "frames.npy", frames)
    np.savez(
        tmp / "table.npz",
        scene_id=np.array(cols["scene_id"], dtype=str),
        video_row=np.array(cols["video_row"], dtype=np.int32),
        scene_index=np.array(cols["scene_index"], dtype=np.int32),
        start_time=np.array(cols["start_time"], dtype=np.float64),
        end_time=np.array(cols["end_time"], dtype=np.float64),
        frame_offset=np.array(cols["frame_offset"], dtype=np.int64),
        frame_count=np.array(cols["frame_count"], dtype=np.int32),
        sample_times=np.array(sample_times, dtype=np.float64),
    )
    (tmp / "videos.json").write_text(json.dumps(videos))
    (tmp / "meta.json").write_text(json.dumps({
        "generation": token, "model": meta["model"], "model_identity": meta["model_identity"],
        "scenes": row, "videos": len(videos), "dim": dim,
    }))
    build = root / name
    os.replace(tmp, build)
    current_tmp = root / f"CURRENT.{name}.tmp"
    current_tmp.write_text(name)
    os.replace(current_tmp, root / "CURRENT")
    _remove_old_builds(root, keep=name)
    return build


def _remove_old_builds(root: Path, keep: str) -> None:
    """Deletes superseded builds; another process's build in progress (tmp-*) is left alone
    unless it is old enough to be a crash's leftover."""
    import time

    for entry in root.iterdir():
        if not entry.is_dir() or entry.name == keep:
            continue
        if entry.name.startswith("tmp-") and time.time() - entry.stat().st_mtime < 600:
            continue
        shutil.rmtree(entry, ignore_errors=True)
