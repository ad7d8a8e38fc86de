"""Stage 7: the FAISS index over all scene vectors, cached on disk, and what was committed since.

The cache lives in `<index dir>/faiss/<build>/` with `CURRENT` naming the live build:
`flat.faiss` (exact inner-product index), `frames.npy` (sample-frame vectors), `table.npz`
(FAISS row -> scene id, video, times), `videos.json` (each video's id, version and path) and
`meta.json` (the generation token it was built from, and the model). A build is written aside
and switched in by replacing `CURRENT`, so a reader never sees half a cache; builds are made
one at a time under `build.lock`, and only the builder holding it removes superseded builds.

A search that finds the cache older than the stores does not rebuild it: it reads the video
records, loads the vectors of only the videos committed since (a small in-memory overlay) and
hides the rows of videos removed or replaced since (`LiveIndex`). The index run rebuilds the
cache once at its end.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import usable_cores
from .errors import CliptoolError, IndexBusyError, IndexMissingError, one_line
from .store import IndexStore, VideoRecord, generation

CACHE_DIR = "faiss"
BUILD_LOCK_TIMEOUT = 600.0  # seconds a process waits for another one's cache build
_OVERLAY_LIMIT = 2_000  # scenes committed since the build that a search loads itself (or a quarter of the build)
_LOAD_ATTEMPTS = 5
_SPLIT_ROWS = 20_000  # from here on a query scans its halves on two cores (9-10 -> 5-8 ms at 100k)
_FLAT_HEADER = struct.Struct("<4siqqqBiQ")


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
    continues_shot: bool = False  # a window of a long shot after its first (no cut before it)


class _LazyTable(dict):
    """table.npz columns, each read on first use (a cold search needs only a few rows)."""

    def __init__(self, npz: Any) -> None:
        super().__init__()
        self._npz = npz

    def __missing__(self, key: str) -> np.ndarray:
        value = self[key] = self._npz[key]
        return value

    def __iter__(self):  # type: ignore[override]
        return iter(self._npz.files)

    def keys(self):  # type: ignore[override]
        return list(self._npz.files)


class VectorIndex:
    """A loaded cache: FAISS index plus the table that maps rows back to scenes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta: dict[str, Any] = json.loads((directory / "meta.json").read_text())
        self._faiss: Any = None
        self.faiss  # opens (memory-maps) the index now, so a damaged cache fails here
        self._npz = np.load(directory / "table.npz", allow_pickle=False)
        self._table = _LazyTable(self._npz)
        self.frames = np.load(directory / "frames.npy", mmap_mode="r")
        self._frame_rows: np.ndarray | None = None
        self.videos: list[dict[str, Any]] = json.loads((directory / "videos.json").read_text())

    @property
    def faiss(self) -> Any:
        """The FAISS flat index, memory-mapped (vectors are read from the page cache on use)."""
        if self._faiss is None:
            import faiss

            self._faiss = faiss.read_index(str(self.directory / "flat.faiss"),
                                           faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        return self._faiss

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
            continues_shot=bool(t["continues_shot"][row]) if "continues_shot" in self._npz.files else False,
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

    def scene_vector(self, row: int) -> np.ndarray:
        return np.asarray(self.faiss.reconstruct(int(row)), dtype=np.float32)

    def frame_candidates(self, query: np.ndarray, k: int, limit: int,
                         allowed: np.ndarray | None = None) -> list[int]:
        """Rows of the scenes holding the `k` sample frames nearest the query, best first, by an
        exact scan of every frame vector; [] on a cache of more than `limit` frames (candidates
        then come by scene vector only). A short moment's frame is found even where its
        scene's mean is far from the query. `allowed`: a boolean mask over rows; only the
        frames of those rows count (None: every row)."""
        return [row for _, row in self._frame_hits(query, k, limit, allowed)]

    def _frame_hits(self, query: np.ndarray, k: int, limit: int,
                    allowed: np.ndarray | None = None) -> list[tuple[float, int]]:
        if not 0 < len(self.frames) <= limit:
            return []
        if self._frame_rows is None:  # frame number in frames.npy -> its scene's row
            offsets = np.asarray(self._table["frame_offset"], dtype=np.int64)
            counts = np.asarray(self._table["frame_count"], dtype=np.int64)
            rows = np.full(len(self.frames), -1, dtype=np.int64)
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            rows[np.repeat(offsets, counts) + within] = np.repeat(np.arange(len(counts)), counts)
            self._frame_rows = rows
        scores = np.asarray(self.frames, dtype=np.float32) @ np.asarray(query, dtype=np.float32).reshape(-1)
        if allowed is not None:  # frames of rows not allowed (or of no row) never come first
            counted = (self._frame_rows >= 0) & np.asarray(allowed, dtype=bool)[np.maximum(self._frame_rows, 0)]
            scores = np.where(counted, scores, -np.inf)
            k = min(k, int(counted.sum()))
            if k == 0:
                return []
        n = min(k, len(scores))
        best = np.argpartition(-scores, n - 1)[:n]
        hits = [(float(scores[i]), int(self._frame_rows[i])) for i in best if self._frame_rows[i] >= 0]
        return sorted(hits, key=lambda h: -h[0])

    def row_of_scene(self, scene_id: str) -> int | None:
        rows = np.flatnonzero(self._table["scene_id"] == scene_id)
        return int(rows[0]) if len(rows) else None

    def scene_ids(self) -> list[str]:
        return [str(x) for x in self._table["scene_id"]]

    def scene_matrix(self) -> np.ndarray:
        """Every row's scene vector, (size, dim)."""
        return self.faiss.reconstruct_n(0, self.size) if self.size else np.zeros((0, self.dim), np.float32)

    def video_states(self) -> dict[str, tuple[str, str]] | None:
        """video id -> (version, path) of the videos this build holds; None for a build made
        before versions were recorded."""
        if any("version" not in v for v in self.videos):
            return None
        return {v["video_id"]: (v["version"], v["path"]) for v in self.videos}

    def scores(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) for one L2-normalised query vector, best first. `allowed`: a
        boolean mask over rows; FAISS then scores only those rows (None: every row)."""
        import faiss

        k = max(1, min(k, self.size))
        bitmap = only = None
        if allowed is not None:
            # kept referenced until the searches are done: FAISS reads the bitmap in place
            bitmap = np.packbits(np.asarray(allowed, dtype=bool)[: self.size], bitorder="little")
            only = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        parts = min(usable_cores(), 2) if self.size >= _SPLIT_ROWS else 1
        bounds = [self.size * i // parts for i in range(parts + 1)]
        found: list[tuple[np.ndarray, np.ndarray] | BaseException] = [ValueError("not searched")] * parts

        def scan(i: int) -> None:
            # One thread per part, each single-threaded: OpenMP threads spinning for cores are
            # 2-5x slower on a busy machine. (The OpenMP setting is per thread.)
            try:
                faiss.omp_set_num_threads(1)
                sel = None if parts == 1 else faiss.IDSelectorRange(bounds[i], bounds[i + 1])
                if only is not None:
                    sel = only if sel is None else faiss.IDSelectorAnd(sel, only)
                params = None if sel is None else faiss.SearchParameters(sel=sel)
                found[i] = self.faiss.search(q, k, params=params)
            except BaseException as exc:  # noqa: BLE001 - raised by the caller below
                found[i] = exc

        threads = faiss.omp_get_max_threads()
        helpers = [threading.Thread(target=scan, args=(i,), name="faiss-scan") for i in range(1, parts)]
        try:
            for t in helpers:
                t.start()
            scan(0)
        finally:
            for t in helpers:
                t.join()
            faiss.omp_set_num_threads(threads)
        for part in found:
            if isinstance(part, BaseException):
                raise part
        scores = np.concatenate([part[0][0] for part in found])  # type: ignore[index]
        rows = np.concatenate([part[1][0] for part in found])  # type: ignore[index]
        keep = rows >= 0
        scores, rows = scores[keep], rows[keep]
        order = np.lexsort((rows, -scores))[:k]  # ties by row: the order does not depend on the split
        return scores[order], rows[order]


def load_vector_index(index_dir: Path) -> VectorIndex | LiveIndex:
    """What a search needs for `index_dir`: the cache, with whatever was committed since it was
    built laid over it, or, when no cache exists or too much changed, a fresh build."""
    index_dir = Path(index_dir)
    unreadable: set[Path] = set()
    why = ""
    for _ in range(_LOAD_ATTEMPTS):
        build = current_build(index_dir)
        token = generation(index_dir)
        if build is not None:
            try:
                base = VectorIndex(build)
            except (OSError, ValueError, RuntimeError) as exc:
                why = one_line(exc)
                if build in unreadable:  # damaged, not just replaced as we opened it: build anew
                    rebuild(index_dir)
                else:
                    unreadable.add(build)
                    time.sleep(0.05)
                continue
            if base.meta.get("generation") == token:
                return base
            live = _with_changes(index_dir, base)
            if live is not None:
                return live
        rebuild(index_dir, only_if_stale=True)
    raise CliptoolError(f"cannot read the search cache at {_cache_root(index_dir)} ({why or 'it keeps changing'}); "
                        "run `cliptool check --repair`")


def _with_changes(index_dir: Path, base: VectorIndex) -> LiveIndex | None:
    """The build plus what was committed since, or None when a rebuild is the better answer."""
    cached = base.video_states()
    if cached is None:
        return None
    with IndexStore(index_dir) as store:
        meta = store.meta()
        if meta.get("model_identity") != base.meta.get("model_identity"):
            return None
        records = list(store.videos())
        changed = [r for r in records if cached.get(r.video_id) != (r.version, r.path)]
        if sum(r.scene_count for r in changed) > max(_OVERLAY_LIMIT, base.size // 4):
            return None
        current = {(r.video_id, r.version, r.path) for r in records}
        retired_ids = [vid for vid, (version, path) in cached.items() if (vid, version, path) not in current]
        overlay = _Overlay.read(store, sorted(changed, key=lambda r: r.path), base.size, base.dim)
    retired = np.zeros(base.size, dtype=bool)
    for vid in retired_ids:
        retired[base.rows_of_video(vid)] = True
    return LiveIndex(base, overlay, retired, len(records))


@dataclass
class _Overlay:
    """Scenes committed after the build: their vectors and positions, rows after the build's."""

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
                    list(scene.sample_times[: len(vec.frames)]) + [scene.start_time] * (len(vec.frames) - len(scene.sample_times)),
                    scene.continues_shot))
                scenes.append(vec.scene)
                frames.append(vec.frames)
        matrix = np.stack(scenes).astype(np.float32) if scenes else np.zeros((0, dim), np.float32)
        return cls(first_row, matrix, frames, positions)


class LiveIndex:
    """A build with the scenes committed since laid over it: new rows after the build's, and
    the rows of videos removed or replaced since hidden. Answers like a VectorIndex."""

    def __init__(self, base: VectorIndex, overlay: _Overlay, retired: np.ndarray, videos: int) -> None:
        self.base = base
        self.overlay = overlay
        self.retired = retired
        self.hidden = int(retired.sum())
        self.meta = {**base.meta, "scenes": self.size, "videos": videos, "overlay": len(overlay.positions),
                     "retired": self.hidden}

    @property
    def size(self) -> int:
        """Live scenes (the hidden rows of the build not counted)."""
        return self.base.size - self.hidden + len(self.overlay.positions)

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def model_spec(self) -> dict[str, str]:
        return self.base.model_spec

    def _is_new(self, row: int) -> bool:
        return row >= self.overlay.first_row

    def position(self, row: int) -> ScenePosition:
        return self.overlay.positions[row - self.overlay.first_row] if self._is_new(row) else self.base.position(row)

    def frame_vectors(self, row: int) -> np.ndarray:
        return self.overlay.frames[row - self.overlay.first_row] if self._is_new(row) else self.base.frame_vectors(row)

    def scene_vector(self, row: int) -> np.ndarray:
        return self.overlay.scenes[row - self.overlay.first_row] if self._is_new(row) else self.base.scene_vector(row)

    def row_of_scene(self, scene_id: str) -> int | None:
        new = next((p.row for p in self.overlay.positions if p.scene_id == scene_id), None)
        if new is not None:
            return new
        row = self.base.row_of_scene(scene_id)
        return None if row is None or self.retired[row] else row

    def frame_candidates(self, query: np.ndarray, k: int, limit: int,
                         allowed: np.ndarray | None = None) -> list[int]:
        """As VectorIndex.frame_candidates, hidden rows left out and the scenes committed since
        the build scanned too. `allowed`: a boolean mask over rows (build rows, then new ones)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        base_allowed = None if allowed is None else np.asarray(allowed[: self.base.size], dtype=bool) & ~self.retired
        found = [(score, row) for score, row in self.base._frame_hits(q, k, limit, base_allowed) if not self.retired[row]]
        for i, frames in enumerate(self.overlay.frames):
            if allowed is not None and not allowed[self.overlay.first_row + i]:
                continue
            if len(frames):
                found.append((float(np.max(np.asarray(frames, dtype=np.float32) @ q)), self.overlay.first_row + i))
        found.sort(key=lambda h: -h[0])
        return [row for _, row in found[:k]]

    def rows_of_video(self, video_id: str) -> np.ndarray:
        old = self.base.rows_of_video(video_id)
        old = old[~self.retired[old]]
        new = [p.row for p in self.overlay.positions if p.video_id == video_id]
        return np.concatenate([old, np.asarray(new, dtype=np.int64)])

    def scores(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows), best first, ties by row, as VectorIndex.scores. `allowed`: a
        boolean mask over rows (build rows, then new ones)."""
        if allowed is None:
            scores, rows = self.base.scores(query, k + self.hidden)
        else:
            base_allowed = np.asarray(allowed[: self.base.size], dtype=bool) & ~self.retired
            scores, rows = self.base.scores(query, k, base_allowed) if base_allowed.any() else \
                (np.zeros(0, np.float32), np.zeros(0, np.int64))
        keep = ~self.retired[rows]
        scores, rows = scores[keep], rows[keep]
        if len(self.overlay.positions):
            new_scores = self.overlay.scenes @ np.asarray(query, dtype=np.float32).reshape(-1)
            new_rows = np.arange(len(new_scores)) + self.overlay.first_row
            if allowed is not None:
                new_allowed = np.asarray(allowed[self.overlay.first_row:], dtype=bool)
                new_scores, new_rows = new_scores[new_allowed], new_rows[new_allowed]
            scores = np.concatenate([scores, new_scores.astype(np.float32)])
            rows = np.concatenate([rows, new_rows])
        order = np.lexsort((rows, -scores))[:k]
        return scores[order], rows[order]


def _cache_root(index_dir: Path) -> Path:
    return Path(index_dir) / CACHE_DIR


def current_build(index_dir: Path) -> Path | None:
    """The folder of the live build, None when there is none."""
    try:
        name = (_cache_root(index_dir) / "CURRENT").read_text().strip()
    except OSError:
        return None
    path = _cache_root(index_dir) / name
    return path if name and (path / "meta.json").exists() else None


def build_generation(build: Path) -> str | None:
    """The generation token of the stores a build was made from."""
    try:
        return json.loads((build / "meta.json").read_text()).get("generation")
    except (OSError, ValueError):
        return None


def cache_state(index_dir: Path) -> str:
    """"missing", "current" (built from the stores as they are) or "stale"."""
    build = current_build(index_dir)
    if build is None:
        return "missing"
    return "current" if build_generation(build) == generation(index_dir) else "stale"


class _BuildLock:
    """One cache build at a time per index (flock: freed on any exit)."""

    def __init__(self, root: Path, timeout: float = BUILD_LOCK_TIMEOUT) -> None:
        self.path = root / "build.lock"
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> _BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise IndexBusyError(f"another process has been building the search cache at {self.path.parent} "
                                         f"for over {self.timeout:g} s; try again") from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def rebuild(index_dir: Path, only_if_stale: bool = False) -> Path:
    """Builds the cache from the stores and makes it current. Returns its directory.

    One process builds at a time; with only_if_stale, a build that became current while this
    one waited for its turn is taken as it is. Vectors are streamed to the build's files one
    video at a time (the scene vectors straight into FAISS's flat-index file format), so
    memory stays at one video's vectors plus the row table, whatever the size of the index.
    """
    index_dir = Path(index_dir)
    root = _cache_root(index_dir)
    if not IndexStore(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir} yet; run `cliptool index FOLDER` first")
    with _BuildLock(root):
        build = current_build(index_dir)
        if only_if_stale and build is not None and build_generation(build) == generation(index_dir):
            return build
        return _build(index_dir, root)


def _build(index_dir: Path, root: Path) -> Path:
    token = generation(index_dir)  # read before the stores: a later commit makes this build stale
    name = secrets.token_hex(6)
    tmp = root / f"tmp-{name}"
    with IndexStore(index_dir) as store:
        meta = store.meta()
        records = sorted(store.videos(), key=lambda v: v.path)
        if not meta or not records:
            raise IndexMissingError(f"index at {index_dir} holds no videos yet; run `cliptool index FOLDER`")
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        try:
            with _FlatWriter(tmp / "flat.faiss") as flat, _NpyWriter(tmp / "frames.npy") as frames:
                table, videos = _write_vectors(store, records, flat, frames)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    row, dim = flat.rows, flat.dim
    if row == 0 or dim is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise IndexMissingError(f"index at {index_dir} holds no scenes yet; run `cliptool index FOLDER`")
    np.savez(tmp / "table.npz", **table)
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


def _write_vectors(store: IndexStore, records: list[Any], flat: _FlatWriter, frames: _NpyWriter
                   ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Streams every scene's vectors into `flat` and `frames`; returns the row table and videos."""
    from array import array

    scene_ids: list[str] = []
    cols = {"video_row": array("i"), "scene_index": array("i"), "start_time": array("d"),
            "end_time": array("d"), "frame_offset": array("q"), "frame_count": array("i"),
            "continues_shot": array("b")}
    sample_times = array("d")
    videos: list[dict[str, Any]] = []
    frame_off = 0
    for vrow, video in enumerate(records):
        videos.append({"video_id": video.video_id, "version": video.version, "path": video.path,
                       "duration": video.duration, "mtime": video.mtime})
        scenes = store.scenes(video)
        vectors = store.vectors(video)
        n = min(len(scenes), len(vectors))
        if n == 0:
            continue
        flat.add(np.stack([v.scene for v in vectors[:n]]))
        for scene, vec in zip(scenes[:n], vectors[:n]):
            count = len(vec.frames)
            frames.add(vec.frames)
            scene_ids.append(scene.scene_id)
            cols["video_row"].append(vrow)
            cols["scene_index"].append(scene.index)
            cols["start_time"].append(scene.start_time)
            cols["end_time"].append(scene.end_time)
            cols["frame_offset"].append(frame_off)
            cols["frame_count"].append(count)
            cols["continues_shot"].append(bool(scene.continues_shot))
            sample_times.extend(scene.sample_times[:count])
            sample_times.extend([scene.start_time] * (count - len(scene.sample_times)))
            frame_off += count
        del scenes, vectors
    dtypes = {"video_row": np.int32, "scene_index": np.int32, "start_time": np.float64,
              "end_time": np.float64, "frame_offset": np.int64, "frame_count": np.int32, "continues_shot": np.bool_}
    table = {"scene_id": np.array(scene_ids, dtype=str)}
    table.update({k: np.frombuffer(v, dtype=dtypes[k]) if len(v) else np.zeros(0, dtypes[k]) for k, v in cols.items()})
    table["sample_times"] = np.frombuffer(sample_times, dtype=np.float64) if len(sample_times) else np.zeros(0)
    if flat.dim is not None and frames.dim is None:
        frames.dim = flat.dim
    return table, videos


class _RowWriter:
    """Streams (N, D) float32 row blocks into a file whose fixed-size header is written at close."""

    _HEADER_BYTES = 0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.dim: int | None = None
        self._f: Any = None

    def __enter__(self) -> _RowWriter:
        self._f = open(self.path, "wb")
        self._f.write(b"\0" * self._HEADER_BYTES)
        return self

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.size == 0:
            return
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        elif vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of dimension {vectors.shape[1]} in an index of {self.dim}")
        self._f.write(vectors.tobytes())
        self.rows += len(vectors)

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._f.seek(0)
                self._f.write(self._header())
        finally:
            self._f.close()

    def _header(self) -> bytes:
        raise NotImplementedError


class _FlatWriter(_RowWriter):
    """Writes float32 vectors straight into the file format of `faiss.write_index(IndexFlatIP)`.

    Layout: fourcc "IxFI", d (int32), ntotal (int64), two int64 placeholders (1 << 20),
    is_trained (uint8), metric type (int32, 0 = inner product), then the vectors: their number
    of floats (uint64) and the raw little-endian float32 rows. Header fields that
    depend on the row count are written when the file is closed. Tests check that FAISS reads it.
    """

    _HEADER_BYTES = _FLAT_HEADER.size

    def _header(self) -> bytes:
        d = self.dim or 0
        return _FLAT_HEADER.pack(b"IxFI", d, self.rows, 1 << 20, 1 << 20, 1, 0, self.rows * d)


class _NpyWriter(_RowWriter):
    """Writes an (N, D) float32 .npy file row block by row block (header fixed up at close)."""

    _HEADER_BYTES = 128

    def _header(self) -> bytes:
        return _npy_header(self.rows, self.dim or 0, self._HEADER_BYTES)


def _npy_header(rows: int, dim: int, total: int) -> bytes:
    """An NPY 1.0 header for a C-order (rows, dim) little-endian float32 array, `total` bytes long."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    pad = total - 10 - len(text) - 1
    if pad < 0:
        raise ValueError("npy header too long")
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _remove_old_builds(root: Path, keep: str) -> None:
    """Deletes every build but `keep`, and leftovers of interrupted builds. Called only by the
    holder of the build lock, so no other build is in progress; a search that still reads a
    removed build keeps its open files."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
