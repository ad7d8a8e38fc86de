"""Stage 7: the FAISS cache over all scene vectors, kept in line with the stores commit by commit.

The cache lives in `<index dir>/faiss/`. It is a list of *segments*, each a folder written once
and never changed: `flat.faiss` (the exact scene vectors, FAISS's flat inner-product format),
`frames.npy` (sample-frame vectors), `table.npz` (row -> scene id, video, times), `videos.json`
(each video's id, version and path), `meta.json` (model, rows) and, on a large segment,
`approx.faiss` (an approximate FAISS index, see below). `CURRENT` is the manifest: a small JSON
file naming the segments in order, the *retired* videos of each (tombstones: rows of videos
removed, replaced or moved since that segment was written) and the store generation it
matches. It is replaced atomically, so a reader always sees a whole cache. (An older cache's
`CURRENT` holds a bare build name; it reads as a one-segment cache.)

Growing without rebuilding: after each commit the index run calls `sync_cache` with the ids it
changed. That writes the changed videos' rows as a new (delta) segment and retires their old
rows, so its cost is that of the change. Small delta segments are merged as they pile up (a
binary counter: at most a few dozen, each merge proportional to its segments); when retired
rows pass `COMPACT_RETIRED` of the cache, or the deltas pass `COMPACT_DELTAS` of the first
segment, everything is merged into a new base (compaction, reported). Merges read the cache's
own files, never the stores. Builds and merges run one at a time under `build.lock`; only the
holder removes segments no manifest names, and a reader keeps the files it opened.

A search in another process reads the manifest; when it matches the stores' generation the
stores are not opened at all. Otherwise (a commit not yet synced, or a crash between a commit
and its sync) the search reads the video records, lays the few videos committed since over the
cache in memory and hides the rows retired since (`LiveIndex`); when that is too much it
appends it to the cache itself (`sync_cache`, never a rebuild from scratch). The next index run
and `check --repair` bring a lagging cache back in line the same way.

Approximate search: a segment of `APPROX_MIN_ROWS` rows or more (or of 1,024 or more,
with CLIPTOOL_VECTOR_INDEX=approx; never, with =exact) also gets an `index_factory` IVF index with
8-bit scalar codes, trained from its own vectors (a HNSW coarse quantiser past 1,024 lists).
Its nprobe is tuned when it is built, on sample queries against the exact scan, to the smallest
giving recall@10 >= `APPROX_TARGET_RECALL`, and the recall measured is kept in its meta.json
(`cliptool status` shows it). Its candidates are re-ranked exactly from the stored vectors.
Delta segments large enough use the base's trained quantiser; small ones are scanned exactly.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.config import usable_cores
from cliptool.errors import CliptoolError, IndexBusyError, IndexMissingError, one_line
from cliptool.vectors.base import ScenePosition, VideoFilter
from cliptool.store import IndexStore, VideoRecord, generation

CACHE_DIR = "faiss"
BUILD_LOCK_TIMEOUT = 600.0  # seconds a process waits for another one's cache build
_OVERLAY_LIMIT = 2_000  # scenes committed since the cache that a search lays over it in memory
_LOAD_ATTEMPTS = 5
_SPLIT_ROWS = 20_000  # from here on a query scans its halves on two cores (9-10 -> 5-8 ms at 100k)
_FLAT_HEADER = struct.Struct("<4siqqqBiQ")
MANIFEST_FORMAT = 2

COMPACT_RETIRED = 0.25  # compaction when retired rows pass this fraction of the cache's rows
COMPACT_DELTAS = 0.25  # ... or the delta segments' rows pass this fraction of the base's
MAX_DELTAS = 24  # delta segments before they are merged, whatever their sizes
APPROX_MIN_ROWS = 200_000  # a segment this large gets an approximate index (auto mode)
DELTA_APPROX_MIN_ROWS = 20_000  # a delta this large is encoded with the base's trained quantiser
APPROX_TARGET_RECALL = 0.99  # nprobe is tuned to this recall@10 (after re-ranking) on sample queries
APPROX_CANDIDATES = 100  # candidates an approximate segment returns for exact re-ranking (at least)
APPROX_MODES = ("auto", "exact", "approx")
_APPROX_FLOOR = 1_024  # below this an exact scan is as fast, whatever was asked
VECTOR_INDEX_ENV = "CLIPTOOL_VECTOR_INDEX"

Report = Callable[[str], None]


def approx_mode() -> str:
    """"auto" (approximate past APPROX_MIN_ROWS), "exact" or "approx", from CLIPTOOL_VECTOR_INDEX."""
    mode = os.environ.get(VECTOR_INDEX_ENV, "auto").strip().lower() or "auto"
    if mode not in APPROX_MODES:
        raise CliptoolError(f"{VECTOR_INDEX_ENV}={mode!r}: choose one of {', '.join(APPROX_MODES)}")
    return mode


def _wants_approx(rows: int, mode: str | None = None) -> bool:
    mode = mode or approx_mode()
    return rows >= _APPROX_FLOOR and (mode == "approx" or (mode == "auto" and rows >= APPROX_MIN_ROWS))


class _LazyTable(dict):
    """table.npz columns, each opened on first use and memory-mapped where the file stores it
    uncompressed (as the cache writes it): a cold search reads the pages of the few rows it
    looks at, not whole columns (reading them took 0.2-0.4 s of a cold search at 1M scenes)."""

    def __init__(self, npz: Any) -> None:
        super().__init__()
        self._npz = npz

    def __missing__(self, key: str) -> np.ndarray:
        value = _mapped_member(self._npz, key)
        self[key] = value = self._npz[key] if value is None else value
        return value

    def __iter__(self):  # type: ignore[override]
        return iter(self._npz.files)

    def keys(self):  # type: ignore[override]
        return list(self._npz.files)


def _mapped_member(npz: Any, key: str) -> np.ndarray | None:
    """Array `key` of an open .npz file as a read-only memory map of the file, or None when it
    cannot be mapped (a compressed or empty member, object data, an unexpected layout)."""
    import zipfile

    try:
        info = npz.zip.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        path = npz.zip.filename
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local header: its name and extra field come next
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            data = f.tell()
        count = int(np.prod(shape, dtype=np.int64))
        if dtype.hasobject or count == 0 or data - start + count * dtype.itemsize > info.file_size:
            return None
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=data, shape=shape, order="F" if fortran else "C")
        return mapped.view(np.ndarray)  # a plain array (the map stays alive as its base)
    except (KeyError, OSError, ValueError, AttributeError):
        return None


class CacheChangedError(CliptoolError):
    """A segment this process opened was merged away and removed before it read all of it:
    load the cache again (`load_vector_index`) and repeat the query."""


def _numbered_videos(segments: list[VectorIndex], extra: Iterable[str] = ()) -> tuple[list[str], np.ndarray]:
    """The distinct video ids of segments' rows (then of `extra` rows, one id per row) and each
    row's number in that list: one small lookup per segment, gathered over its video column."""
    number: dict[str, int] = {}
    parts = []
    for seg in segments:
        lookup = np.array([number.setdefault(v["video_id"], len(number)) for v in seg.videos] or [-1], dtype=np.int64)
        parts.append(lookup[np.asarray(seg._table["video_row"])] if seg.size else np.zeros(0, np.int64))
    parts.append(np.array([number.setdefault(v, len(number)) for v in extra], dtype=np.int64))
    return list(number), np.concatenate(parts)


def _bitmap_selector(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS selector of the rows where `mask` is True (keep the array alive with it)."""
    import faiss

    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool), bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


_SCAN_POOL: Any = None
_SCAN_POOL_LOCK = threading.Lock()


def _scan_pool() -> Any:
    """The helper thread that scans the second half of a large flat segment (started once: a
    thread started per query cost 0.1-2 ms of a 10 ms query on a busy machine)."""
    global _SCAN_POOL
    with _SCAN_POOL_LOCK:
        if _SCAN_POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _SCAN_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss-scan")
        return _SCAN_POOL


def _forget_scan_pool() -> None:
    """In a forked child: the parent's helper thread does not exist there; start a new one."""
    global _SCAN_POOL, _SCAN_POOL_LOCK
    _SCAN_POOL, _SCAN_POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_scan_pool)


def _top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k, ties by row (so the order does not depend on how the rows were split)."""
    order = np.lexsort((rows, -scores))[:k]
    return scores[order], rows[order]


class VectorIndex:
    """One segment of the cache (or a whole one-segment cache): FAISS index plus the table
    that maps rows back to scenes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta: dict[str, Any] = json.loads((directory / "meta.json").read_text())
        self._faiss: Any = None
        self._approx: Any = None
        self._vectors: np.ndarray | None = None
        self._size, self._dim = self._check_flat()  # a damaged cache fails here
        # Mapped now (a mapping costs no reads), so a segment that a merge removes after this
        # keeps answering: open files outlive their names.
        self.vectors_view()
        self._map_flat()
        self._npz = np.load(directory / "table.npz", allow_pickle=False)
        self._table = _LazyTable(self._npz)
        self.frames = np.load(directory / "frames.npy", mmap_mode="r")
        self._frame_rows: np.ndarray | None = None
        self._video_rows: dict[str, int] | None = None
        self.videos: list[dict[str, Any]] = json.loads((directory / "videos.json").read_text())

    def _check_flat(self) -> tuple[int, int]:
        """(rows, dim) from flat.faiss's header, checked against its length, without reading
        the vectors (FAISS reads them all when it opens the file: 0.2 s per 100k rows)."""
        path = self.directory / "flat.faiss"
        with open(path, "rb") as f:
            head = f.read(_FLAT_HEADER.size)
        if len(head) != _FLAT_HEADER.size:
            raise ValueError(f"{path} is truncated")
        fourcc, dim, rows, _, _, _, metric, floats = _FLAT_HEADER.unpack(head)
        if fourcc != b"IxFI" or metric != 0 or floats != rows * dim or \
                path.stat().st_size != _FLAT_HEADER.size + 4 * rows * dim:
            raise ValueError(f"{path} is not a flat inner-product index as the cache writes it")
        return int(rows), int(dim)

    @property
    def faiss(self) -> Any:
        """The FAISS flat index (exact scan), mapped when the segment was opened: FAISS's
        IO_FLAG_MMAP_IFC searches the vectors in place (the plain IO_FLAG_MMAP copies them into
        memory, 0.2-0.6 s per 100k rows of a cold search); read on first use by a FAISS without it."""
        if self._faiss is None:
            import faiss

            self._faiss = self._read(self.directory / "flat.faiss", faiss.IO_FLAG_READ_ONLY)
        return self._faiss

    def _map_flat(self) -> None:
        """Opens the flat index in place when this FAISS can map it in place (no reads)."""
        import faiss

        if self.size and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            try:
                self._faiss = faiss.read_index(str(self.directory / "flat.faiss"),
                                               faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                pass  # read on first use instead

    @staticmethod
    def _read(path: Path, flags: int) -> Any:
        """A FAISS index read from the file; CacheChangedError when a merge removed it since the
        segment was opened (the caller reloads the cache and asks again)."""
        import faiss

        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError:
            if not path.exists():
                raise CacheChangedError(f"search cache segment {path.parent.name} was replaced while in use") from None
            raise

    @property
    def approx(self) -> Any | None:
        """The approximate FAISS index of a large segment (None: searched exactly)."""
        if self._approx is None and self.meta.get("approx"):
            import faiss

            path = self.directory / "approx.faiss"
            try:
                self._approx = self._read(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:  # (CacheChangedError is not one: it goes to the caller)
                self._approx = self._read(path, 0)
        return self._approx

    @property
    def size(self) -> int:
        return self._size

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_spec(self) -> dict[str, str]:
        return self.meta["model"]

    def vectors_view(self) -> np.ndarray:
        """Every row's scene vector as a read-only memory map of flat.faiss, (size, dim)."""
        if self._vectors is None:
            self._vectors = np.memmap(self.directory / "flat.faiss", dtype="<f4", mode="r", offset=_FLAT_HEADER.size,
                                      shape=(self.size, self.dim)) if self.size else np.zeros((0, self.dim), np.float32)
        return self._vectors

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

    def _video_row(self, video_id: str) -> int | None:
        if self._video_rows is None:
            self._video_rows = {v["video_id"]: i for i, v in enumerate(self.videos)}
        return self._video_rows.get(video_id)

    def rows_of_video(self, video_id: str) -> np.ndarray:
        vrow = self._video_row(video_id)
        if vrow is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._table["video_row"] == vrow)

    def rows_of_video_rows(self, vrows: Iterable[int]) -> np.ndarray:
        """A mask of the rows of the videos at these positions of `videos`."""
        wanted = np.zeros(len(self.videos), dtype=bool)
        wanted[list(vrows)] = True
        return wanted[self._table["video_row"]] if len(self.videos) else np.zeros(self.size, dtype=bool)

    def video_of_rows(self) -> np.ndarray:
        """The video id of every row, (size,) str: the per-row video column (for filters)."""
        ids = np.array([v["video_id"] for v in self.videos] or [""], dtype=str)
        return ids[self._table["video_row"]] if self.size else np.zeros(0, dtype=str)

    def video_numbers(self) -> tuple[list[str], np.ndarray]:
        """The segment's video ids, each once, and for every row the number of its video in
        that list, (size,) int64: video_of_rows as numbers, without a string per row."""
        return _numbered_videos([self])

    def row_videos(self) -> tuple[list[str], np.ndarray]:
        return self.video_numbers()

    def listed_videos(self) -> list[dict[str, Any]]:
        return self.videos

    def native_filter(self, where: VideoFilter) -> None:
        return None

    def scene_vector(self, row: int) -> np.ndarray:
        return np.array(self.vectors_view()[int(row)], dtype=np.float32)

    def frame_candidates(self, query: np.ndarray, k: int, limit: int, allowed: np.ndarray | None = None) -> list[int]:
        """Rows of the scenes holding the `k` sample frames nearest the query, best first, by an
        exact scan of every frame vector; [] on a cache of more than `limit` frames (candidates
        then come by scene vector only). A short moment's frame is found even where its
        scene's mean is far from the query. `allowed`: a boolean mask over rows, or None."""
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
        if allowed is not None:
            ok = self._frame_rows >= 0
            ok[ok] = np.asarray(allowed, dtype=bool)[self._frame_rows[ok]]
            scores = np.where(ok, scores, -np.inf)
        n = min(k, len(scores))
        best = np.argpartition(-scores, n - 1)[:n]
        hits = [(float(scores[i]), int(self._frame_rows[i])) for i in best
                if self._frame_rows[i] >= 0 and np.isfinite(scores[i])]
        return sorted(hits, key=lambda h: -h[0])

    def row_of_scene(self, scene_id: str) -> int | None:
        rows = np.flatnonzero(self._table["scene_id"] == scene_id)
        return int(rows[0]) if len(rows) else None

    def scene_ids(self) -> list[str]:
        return [str(x) for x in self._table["scene_id"]]

    def scene_matrix(self) -> np.ndarray:
        """Every row's scene vector, (size, dim)."""
        return np.array(self.vectors_view(), dtype=np.float32)

    def video_states(self) -> dict[str, tuple[str, str]] | None:
        """video id -> (version, path) of the videos this segment holds; None for a build made
        before versions were recorded."""
        if any("version" not in v for v in self.videos):
            return None
        return {v["video_id"]: (v["version"], v["path"]) for v in self.videos}

    def scores(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) for one L2-normalised query vector, best first, ties by row.

        `allowed`: a boolean mask over rows (only those are searched), or None for all. A
        segment with an approximate index takes its candidates from it and re-ranks them by
        their exact scores; otherwise the scan is exact."""
        if self.size == 0 or (allowed is not None and not np.any(allowed)):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        k = max(1, min(k, self.size))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self.approx is not None:
            return self._approx_scores(q, k, allowed)
        return self._flat_scores(q, k, allowed)

    def _approx_scores(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        info = self.meta["approx"]
        params = _ivf_params(info, int(info["nprobe"]))
        keep: Any = None
        if allowed is not None:
            params.sel, keep = _bitmap_selector(allowed)
        wanted = min(self.size, max(k, int(info.get("candidates", APPROX_CANDIDATES))))
        _, found = self.approx.search(q, wanted, params=params)
        del keep
        rows = found[0][found[0] >= 0]
        if len(rows) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        rows = np.sort(rows)
        exact = np.asarray(self.vectors_view()[rows], dtype=np.float32) @ q[0]
        return _top(exact.astype(np.float32), rows.astype(np.int64), k)

    def _flat_scores(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        parts = min(usable_cores(), 2) if self.size >= _SPLIT_ROWS else 1
        bounds = [self.size * i // parts for i in range(parts + 1)]
        found: list[tuple[np.ndarray, np.ndarray] | BaseException] = [ValueError("not searched")] * parts
        bitmap: Any = None
        if allowed is not None:
            bitmap, keep = _bitmap_selector(allowed)

        def scan(i: int) -> None:
            # One thread per part, each single-threaded: OpenMP threads spinning for cores are
            # 2-5x slower on a busy machine. (The OpenMP setting is per thread.)
            try:
                faiss.omp_set_num_threads(1)
                sel = None if parts == 1 else faiss.IDSelectorRange(bounds[i], bounds[i + 1])
                if bitmap is not None:
                    sel = bitmap if sel is None else faiss.IDSelectorAnd(sel, bitmap)
                params = None if sel is None else faiss.SearchParameters(sel=sel)
                found[i] = self.faiss.search(q, k, params=params)
            except BaseException as exc:  # noqa: BLE001 - raised by the caller below
                found[i] = exc

        threads = faiss.omp_get_max_threads()
        helpers = [_scan_pool().submit(scan, i) for i in range(1, parts)]
        try:
            scan(0)
        finally:
            for done in helpers:
                done.result()
            faiss.omp_set_num_threads(threads)
        for part in found:
            if isinstance(part, BaseException):
                raise part
        scores = np.concatenate([part[0][0] for part in found])  # type: ignore[index]
        rows = np.concatenate([part[1][0] for part in found])  # type: ignore[index]
        keep_rows = rows >= 0
        return _top(scores[keep_rows], rows[keep_rows], k)

    def describe(self) -> dict[str, Any]:
        """The kind of index of this segment, its parameters and measured recall."""
        info = self.meta.get("approx")
        if not info:
            return {"kind": "exact", "rows": self.size}
        return {"kind": "approximate", "rows": self.size, **info}


# -- the manifest ---------------------------------------------------------------------------------
def _cache_root(index_dir: Path) -> Path:
    return Path(index_dir) / CACHE_DIR


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    """The live cache's manifest (segments, retired videos, generation), None when there is none.

    An older cache's CURRENT names one build; it reads as a manifest of that one segment."""
    root = _cache_root(index_dir)
    try:
        text = (root / "CURRENT").read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    if text.startswith("{"):
        try:
            manifest = json.loads(text)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("segments") else None
    try:
        meta = json.loads((root / text / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return {"format": 1, "generation": meta.get("generation"), "model": meta.get("model"),
            "model_identity": meta.get("model_identity"), "dim": meta.get("dim"),
            "segments": [{"name": text, "rows": meta.get("scenes", 0), "retired": [], "dead": 0}]}


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replaces CURRENT atomically (written aside and synced first)."""
    tmp = root / f"CURRENT.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, separators=(",", ":")))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "CURRENT")


def current_build(index_dir: Path) -> Path | None:
    """The folder of the live cache's first (base) segment, None when there is none."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return None
    path = _cache_root(index_dir) / manifest["segments"][0]["name"]
    return path if (path / "meta.json").exists() else None


def cache_state(index_dir: Path) -> str:
    """"missing", "current" (in line with the stores as they are) or "stale"."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return "missing"
    return "current" if manifest.get("generation") == generation(index_dir) else "stale"


def _video_rows(seg: VectorIndex) -> list[int]:
    """Rows of each video of a segment, in the order of its videos list."""
    if all("rows" in v for v in seg.videos):
        return [int(v["rows"]) for v in seg.videos]
    if not seg.videos:
        return []
    return np.bincount(np.asarray(seg._table["video_row"], dtype=np.int64), minlength=len(seg.videos)).tolist()


def _live_map(manifest: dict[str, Any], segments: list[VectorIndex]) -> dict[str, tuple[str, str, int, int]]:
    """video id -> (version, path, segment number, its row in that segment's videos) of every
    video the cache holds and has not retired."""
    live: dict[str, tuple[str, str, int, int]] = {}
    for i, (entry, seg) in enumerate(zip(manifest["segments"], segments)):
        retired = set(entry.get("retired", ()))
        for vrow, v in enumerate(seg.videos):
            if vrow not in retired:
                live[v["video_id"]] = (v.get("version", ""), v["path"], i, vrow)
    return live


def _retired_mask(entry: dict[str, Any], seg: VectorIndex) -> np.ndarray | None:
    retired = entry.get("retired") or []
    return seg.rows_of_video_rows(retired) if retired else None


# -- bringing the cache in line with the stores -------------------------------------------------------
@dataclass
class SyncResult:
    """What a `sync_cache` call did."""

    rebuilt: bool = False  # built from the stores (no usable cache, or another model)
    added_rows: int = 0
    retired_rows: int = 0
    merged: int = 0  # segments merged into one
    compacted: bool = False  # everything merged into a new base
    messages: list[str] = field(default_factory=list)


def sync_cache(index_dir: Path, video_ids: Iterable[str] | None = None, since: str | None = None,
               report: Report | None = None, rebuild_all: bool = False) -> SyncResult:
    """Brings the cache in line with the stores by appending what changed.

    video_ids: the videos a writer just committed, added, replaced, moved (both ids) or removed;
    only they are compared (the cost is that of the change). `since`: the generation before
    those commits; the cache is marked current only if it was current then. None compares
    every video record with the cache (after a crash, say). rebuild_all builds the cache from
    the stores from scratch. No usable cache, or one of another model, is built from scratch.
    Compaction is reported through `report`.
    """
    index_dir = Path(index_dir)
    root = _cache_root(index_dir)
    if not IndexStore(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir} yet; run `cliptool index FOLDER` first")
    with _BuildLock(root):
        result = _sync_locked(index_dir, root, None if video_ids is None else list(video_ids), since, rebuild_all)
    for message in result.messages:
        if report is not None:
            report(message)
    return result


def rebuild(index_dir: Path, only_if_stale: bool = False) -> Path:
    """Builds the cache from the stores, from scratch, and makes it current. Returns the folder
    of its segment. With only_if_stale, a cache that became current meanwhile is kept."""
    index_dir = Path(index_dir)
    if only_if_stale and cache_state(index_dir) == "current":
        build = current_build(index_dir)
        if build is not None:
            return build
    sync_cache(index_dir, rebuild_all=True)
    build = current_build(index_dir)
    assert build is not None
    return build


def _sync_locked(index_dir: Path, root: Path, video_ids: list[str] | None, since: str | None,
                 rebuild_all: bool) -> SyncResult:
    result = SyncResult()
    token = generation(index_dir)  # read before the stores: a later commit makes this cache stale
    manifest = None if rebuild_all else read_manifest(index_dir)
    if manifest is not None and video_ids is None and manifest.get("generation") == token:
        return result
    segments: list[VectorIndex] = []
    if manifest is not None:
        try:
            segments = [VectorIndex(root / s["name"]) for s in manifest["segments"]]
        except (OSError, ValueError, RuntimeError, KeyError):
            manifest = None  # damaged: built again from the stores
    new_segment: tuple[str, int] | None = None
    with IndexStore(index_dir) as store:
        meta = store.meta()
        if manifest is not None and (meta.get("model_identity") != manifest.get("model_identity")
                                     or any(s.video_states() is None for s in segments)):
            manifest = None
        if manifest is None:
            records = sorted(store.videos(), key=lambda v: v.path)
            if not meta or not records:
                _clear(root)
                raise IndexMissingError(f"index at {index_dir} holds no videos yet; run `cliptool index FOLDER`")
            name, rows, dim = _write_segment(store, records, root, meta, None)
            if rows == 0:
                _clear(root, keep=())
                raise IndexMissingError(f"index at {index_dir} holds no scenes yet; run `cliptool index FOLDER`")
            manifest = {"format": MANIFEST_FORMAT, "generation": token, "model": meta["model"],
                        "model_identity": meta["model_identity"], "dim": dim,
                        "segments": [{"name": name, "rows": rows, "retired": [], "dead": 0}]}
            result.rebuilt = True
            result.added_rows = rows
        else:
            live = _live_map(manifest, segments)
            if video_ids is None:
                current = {r.video_id: r for r in store.videos()}
                ids = set(current) | set(live)
            else:
                ids = set(video_ids)
                current = {vid: rec for vid in ids if (rec := store.get_video(vid)) is not None}
            changed = sorted((current[v] for v in ids if v in current
                              and live.get(v, ("", "", -1, -1))[:2] != (current[v].version, current[v].path)),
                             key=lambda r: r.path)
            retire = [live[v] for v in ids if v in live and (
                v not in current or live[v][:2] != (current[v].version, current[v].path))]
            if changed:
                new_segment = _write_segment(store, changed, root, meta, manifest.get("dim"))[:2]
            was_current = manifest.get("generation") == (token if video_ids is None else since)
            manifest = {**manifest, "format": MANIFEST_FORMAT, "segments": [dict(s) for s in manifest["segments"]]}
            if video_ids is None or was_current:
                manifest["generation"] = token
            for _, _, seg_no, vrow in retire:
                entry = manifest["segments"][seg_no]
                entry["retired"] = sorted(set(entry.get("retired", [])) | {vrow})
                rows = _video_rows(segments[seg_no])[vrow]
                entry["dead"] = int(entry.get("dead", 0)) + rows
                result.retired_rows += rows
            if new_segment is not None:
                manifest["segments"].append({"name": new_segment[0], "rows": new_segment[1], "retired": [], "dead": 0})
                result.added_rows = new_segment[1]
            if len(live) - len(retire) + len(changed) == 0:  # the index holds no video now
                _clear(root)
                return result
    if result.rebuilt:
        _approximate(root / manifest["segments"][0]["name"], None)
    else:
        manifest = _merge_as_needed(root, manifest, result)
    _write_manifest(root, manifest)
    _remove_unlisted(root, {s["name"] for s in manifest["segments"]})
    return result


def _merge_as_needed(root: Path, manifest: dict[str, Any], result: SyncResult) -> dict[str, Any]:
    """Compaction (all into a new base) when retired rows pass COMPACT_RETIRED or the deltas
    pass COMPACT_DELTAS of the base; else merges of the last delta segments while the newest
    is at least half the size of the one before (a binary counter), or past MAX_DELTAS."""
    entries = manifest["segments"]
    live_rows = [int(e["rows"]) - int(e.get("dead", 0)) for e in entries]
    total = sum(int(e["rows"]) for e in entries)
    dead = sum(int(e.get("dead", 0)) for e in entries)
    if total and (dead > COMPACT_RETIRED * total or sum(live_rows[1:]) > COMPACT_DELTAS * live_rows[0]):
        why = "retired" if dead > COMPACT_RETIRED * total else "deltas"
        if not _room_to_merge(root, entries, result, "compacting"):
            return manifest
        name, rows = _merge(root, manifest, entries, train=True)
        if why == "retired" or rows >= DELTA_APPROX_MIN_ROWS:
            result.messages.append(
                f"compacted the search cache: {len(entries)} segment(s) merged into one of {rows} scenes"
                + (f", {dead} retired rows dropped ({dead / total:.0%} of the cache had been retired)" if dead else ""))
        result.compacted = True
        result.merged = len(entries)
        return {**manifest, "segments": [{"name": name, "rows": rows, "retired": [], "dead": 0}]}
    while len(entries) > 2 and (live_rows[-1] * 2 >= live_rows[-2] or len(entries) - 1 > MAX_DELTAS):
        if not _room_to_merge(root, entries[-2:], result, "merging"):
            break
        name, rows = _merge(root, manifest, entries[-2:], train=False)
        entries = entries[:-2] + [{"name": name, "rows": rows, "retired": [], "dead": 0}]
        live_rows = live_rows[:-2] + [rows]
        result.merged += 2
    return {**manifest, "segments": entries}


MERGE_SPARE_BYTES = 64 << 20  # free space a merge leaves beside its segment (the stores' next writes)


_POSTPONED_SAID: set[tuple[str, str]] = set()


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _room_to_merge(root: Path, entries: list[dict[str, Any]], result: SyncResult, doing: str) -> bool:
    """Whether the disk holds the merge's new segment beside the old ones (their live share of
    their files, plus MERGE_SPARE_BYTES); if not, the merge waits for a later update, said once."""
    need = MERGE_SPARE_BYTES
    for e in entries:
        rows, live = int(e["rows"]), int(e["rows"]) - int(e.get("dead", 0))
        size = sum(f.stat().st_size for f in (root / e["name"]).iterdir() if f.is_file())
        need += size * live // max(rows, 1)
    free = _free_bytes(root)
    if free >= need:
        return True
    if (str(root), doing) in _POSTPONED_SAID:  # once per process: an index run syncs after every commit
        return False
    _POSTPONED_SAID.add((str(root), doing))
    result.messages.append(f"postponed {doing} the search cache ({len(entries)} segments): it needs about "
                           f"{need / 1e9:.1f} GB free beside them, the disk has {free / 1e9:.1f} GB; searches "
                           "are unaffected, and a later run merges them once there is room")
    return False


def _merge(root: Path, manifest: dict[str, Any], entries: list[dict[str, Any]], train: bool) -> tuple[str, int]:
    """Merges segments (their live rows, in order) into a new one; returns its name and rows.
    `train`: the result is a new base and gets its own approximate index when large enough;
    else a large result is encoded with the base's trained quantiser."""
    parts = [(VectorIndex(root / e["name"]), set(e.get("retired", ()))) for e in entries]
    name, rows = _merge_segments(root, parts, int(manifest["dim"]), manifest)
    base = root / manifest["segments"][0]["name"]
    _approximate(root / name, None if train else base)
    return name, rows


def _clear(root: Path, keep: Iterable[str] = ()) -> None:
    """No cache: the stores hold no videos (or scenes)."""
    try:
        (root / "CURRENT").unlink()
    except OSError:
        pass
    if root.is_dir():
        _remove_unlisted(root, set(keep))


def _write_segment(store: IndexStore, records: list[VideoRecord], root: Path, meta: dict[str, Any],
                   dim: int | None) -> tuple[str, int, int]:
    """Streams the given videos' vectors from the stores into a new segment; returns its
    name, rows and dimension. Memory stays at one video's vectors plus the row table."""
    name = secrets.token_hex(6)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"tmp-{name}"
    tmp.mkdir()
    try:
        with _FlatWriter(tmp / "flat.faiss") as flat, _NpyWriter(tmp / "frames.npy") as frames:
            flat.dim = frames.dim = dim
            table, videos = _write_vectors(store, records, flat, frames)
        rows, dim = flat.rows, flat.dim or dim or 0
        _finish_segment(tmp, table, videos, meta, rows, dim)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, root / name)
    return name, rows, dim


def _finish_segment(tmp: Path, table: dict[str, np.ndarray], videos: list[dict[str, Any]], meta: dict[str, Any],
                    rows: int, dim: int) -> None:
    np.savez(tmp / "table.npz", **table)
    (tmp / "videos.json").write_text(json.dumps(videos))
    (tmp / "meta.json").write_text(json.dumps({
        "model": meta["model"], "model_identity": meta["model_identity"], "scenes": rows,
        "videos": len(videos), "dim": dim,
    }))


_MERGE_CHUNK = 65_536


def _merge_segments(root: Path, parts: list[tuple[VectorIndex, set[int]]], dim: int,
                    meta: dict[str, Any]) -> tuple[str, int]:
    """Writes the live rows of `parts` (segment, its retired video rows) as one new segment,
    streaming vectors in chunks from the segments' memory-mapped files."""
    name = secrets.token_hex(6)
    tmp = root / f"tmp-{name}"
    tmp.mkdir()
    videos: list[dict[str, Any]] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("scene_id", "video_row", "scene_index", "start_time",
                                                          "end_time", "frame_count", "sample_times",
                                                          "continues_shot")}
    try:
        with _FlatWriter(tmp / "flat.faiss") as flat, _NpyWriter(tmp / "frames.npy") as frames:
            flat.dim = frames.dim = dim
            for seg, retired in parts:
                t = seg._table
                keep_video = np.ones(len(seg.videos), dtype=bool)
                keep_video[sorted(retired)] = False
                renumber = np.cumsum(keep_video) - 1 + len(videos)
                counts_per_video = _video_rows(seg)
                videos += [{**v, "rows": counts_per_video[i]} for i, v in enumerate(seg.videos) if keep_video[i]]
                if seg.size == 0:
                    continue
                video_row = np.asarray(t["video_row"], dtype=np.int64)
                keep = keep_video[video_row]
                counts = np.asarray(t["frame_count"], dtype=np.int64)
                offsets = np.asarray(t["frame_offset"], dtype=np.int64)
                frame_keep = np.zeros(len(seg.frames), dtype=bool)
                kept_counts = counts[keep]
                if kept_counts.sum():
                    starts = np.repeat(offsets[keep], kept_counts)
                    within = np.arange(int(kept_counts.sum())) - np.repeat(np.cumsum(kept_counts) - kept_counts, kept_counts)
                    frame_keep[starts + within] = True
                vectors = seg.vectors_view()
                for a in range(0, seg.size, _MERGE_CHUNK):
                    m = keep[a : a + _MERGE_CHUNK]
                    if m.any():
                        flat.add(np.asarray(vectors[a : a + _MERGE_CHUNK])[m])
                for a in range(0, len(seg.frames), _MERGE_CHUNK):
                    m = frame_keep[a : a + _MERGE_CHUNK]
                    if m.any():
                        frames.add(np.asarray(seg.frames[a : a + _MERGE_CHUNK])[m])
                # sample times follow frames.npy's order (frame offsets are ascending by row)
                times = np.asarray(t["sample_times"], dtype=np.float64)
                order = np.argsort(offsets[keep], kind="stable")
                if not np.all(order == np.arange(len(order))):
                    raise ValueError("segment frames are not in row order")
                cols["scene_id"].append(np.asarray(t["scene_id"])[keep])
                cols["video_row"].append(renumber[video_row[keep]].astype(np.int32))
                cols["scene_index"].append(np.asarray(t["scene_index"], dtype=np.int32)[keep])
                cols["start_time"].append(np.asarray(t["start_time"], dtype=np.float64)[keep])
                cols["end_time"].append(np.asarray(t["end_time"], dtype=np.float64)[keep])
                cols["frame_count"].append(kept_counts.astype(np.int32))
                shot = np.asarray(t["continues_shot"], dtype=np.bool_) if "continues_shot" in t.keys() \
                    else np.zeros(seg.size, dtype=np.bool_)  # a segment written before the column
                cols["continues_shot"].append(shot[keep])
                cols["sample_times"].append(times[frame_keep[: len(times)]] if len(times) else times)
        dtypes = {"scene_id": str, "video_row": np.int32, "scene_index": np.int32, "start_time": np.float64,
                  "end_time": np.float64, "frame_count": np.int32, "sample_times": np.float64,
                  "continues_shot": np.bool_}
        table = {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])) for k, v in cols.items()}
        counts = table["frame_count"].astype(np.int64)
        table["frame_offset"] = (np.cumsum(counts) - counts).astype(np.int64)
        rows = flat.rows
        _finish_segment(tmp, table, videos, meta, rows, dim)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, root / name)
    return name, rows


# -- the approximate index -------------------------------------------------------------------------
def approx_factory(rows: int) -> tuple[str, int]:
    """The index_factory string and number of lists for a segment of `rows` scenes: about
    2 sqrt(rows) inverted lists (a power of two) and 8-bit scalar codes of the residuals. The
    coarse quantiser is exact (2,048 lists at 1M rows: 0.1 ms a query) up to 8,192 lists, and
    HNSW past that (searched with efSearch >= nprobe: a smaller one probes fewer lists)."""
    nlist = int(2 ** round(np.log2(max(16.0, 2 * np.sqrt(max(rows, 1))))))
    nlist = max(16, min(nlist, 65_536, max(16, rows // 8)))
    quantiser = "_HNSW32" if nlist > 8192 else ""
    return f"IVF{nlist}{quantiser},SQ8", nlist


def _ivf_params(info: dict[str, Any], nprobe: int) -> Any:
    """Search parameters of an approximate segment: nprobe lists (and, with a HNSW coarse
    quantiser, an efSearch large enough to return that many)."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    if "HNSW" in info.get("factory", ""):
        quantiser = faiss.SearchParametersHNSW()
        quantiser.efSearch = max(2 * nprobe, 64)
        params.quantizer_params = quantiser
        params._keep = quantiser  # FAISS holds a bare pointer: keep it alive with params
    return params


def sample_queries(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Query-like vectors: stored scene vectors moved well away from themselves (cosine about
    0.7 and 0.45 to their source), as a text or image query sits near, not on, what it finds."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    noise = rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(base.shape[1])
    scale = np.where(np.arange(len(rows)) % 2 == 0, 1.0, 2.0).astype(np.float32)[:, None]
    q = base + noise * scale
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def approx_recall(seg: VectorIndex, queries: np.ndarray, nprobe: int | None = None, k: int = 10,
                  exact: np.ndarray | None = None) -> float:
    """Recall@k of a segment's approximate search (with its exact re-ranking) against the exact
    scan (`exact`: its top-k rows per query, when known), for a batch of queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if exact is None:
        _, exact = seg.faiss.search(queries, k)
    info = seg.meta["approx"]
    params = _ivf_params(info, int(nprobe or info["nprobe"]))
    wanted = min(seg.size, max(k, int(info.get("candidates", APPROX_CANDIDATES))))
    _, found = seg.approx.search(queries, wanted, params=params)
    vectors = seg.vectors_view()
    hits = 0
    for q, rows, want in zip(queries, found, exact):
        rows = np.sort(rows[rows >= 0])
        _, best = _top(np.asarray(vectors[rows], dtype=np.float32) @ q, rows.astype(np.int64), k)
        hits += len(set(best.tolist()) & set(want.tolist()))
    return hits / float(k * len(queries))


_NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def tune_nprobe(seg: VectorIndex, info: dict[str, Any], queries: int = 400) -> None:
    """Sets info's nprobe: one step above the smallest reaching APPROX_TARGET_RECALL on sample
    queries (the step is a margin for queries unlike the sample: measured at 1M scenes, the
    smallest alone gave 0.976-0.981 on fresh queries), and the recall@10 measured with it."""
    sample = sample_queries(seg.vectors_view(), queries, seed=1)
    exact = seg.faiss.search(sample, 10)[1]
    ladder = [p for p in _NPROBES if p <= info["nlist"]]
    for i, nprobe in enumerate(ladder):
        if approx_recall(seg, sample, nprobe, exact=exact) >= APPROX_TARGET_RECALL or i == len(ladder) - 1:
            info["nprobe"] = ladder[min(i + 1, len(ladder) - 1)]
            break
    info["recall_at_10"] = round(approx_recall(seg, sample, info["nprobe"], exact=exact), 4)
    info["recall_queries"] = len(sample)


def _approximate(directory: Path, trained_from: Path | None, mode: str | None = None) -> None:
    """Adds an approximate index to a new segment when it is large enough (see the module
    docstring). `trained_from`: the base segment whose trained quantiser a delta reuses."""
    rows = int(json.loads((directory / "meta.json").read_text()).get("scenes", 0))
    if (rows < DELTA_APPROX_MIN_ROWS) if trained_from is not None else not _wants_approx(rows, mode):
        return
    import faiss

    seg = VectorIndex(directory)
    n, d = seg.size, seg.dim
    if trained_from is not None:
        base_meta = json.loads((trained_from / "meta.json").read_text()) if (trained_from / "meta.json").exists() else {}
        if not base_meta.get("approx") or not (trained_from / "trained.faiss").exists() or n < DELTA_APPROX_MIN_ROWS:
            return
        index = faiss.read_index(str(trained_from / "trained.faiss"))
        info = {k: base_meta["approx"][k] for k in ("factory", "nlist", "nprobe", "candidates", "recall_at_10")}
        info["trained_on"] = "the base segment"
    else:
        if not _wants_approx(n, mode):
            return
        factory, nlist = approx_factory(n)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 40
        rng = np.random.default_rng(0)
        train_rows = np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))
        vectors = seg.vectors_view()
        index.train(np.ascontiguousarray(vectors[train_rows], dtype=np.float32))
        faiss.write_index(index, str(directory / "trained.faiss"))
        info = {"factory": factory, "nlist": nlist, "nprobe": 1, "candidates": APPROX_CANDIDATES,
                "trained_on": int(len(train_rows))}
    vectors = seg.vectors_view()
    for a in range(0, n, _MERGE_CHUNK):
        index.add(np.ascontiguousarray(vectors[a : a + _MERGE_CHUNK], dtype=np.float32))
    faiss.write_index(index, str(directory / "approx.faiss.tmp"))
    os.replace(directory / "approx.faiss.tmp", directory / "approx.faiss")
    seg.meta["approx"] = info
    seg._approx = index
    if trained_from is None:
        tune_nprobe(seg, info)
    meta = json.loads((directory / "meta.json").read_text())
    meta["approx"] = info
    (directory / "meta.json").write_text(json.dumps(meta))


# -- what a search loads ---------------------------------------------------------------------------
def load_vector_index(index_dir: Path) -> VectorIndex | LiveIndex:
    """What a search needs for `index_dir`: the cache's segments, with whatever was committed
    since the cache was brought in line laid over them; the first build when there is none."""
    index_dir = Path(index_dir)
    root = _cache_root(index_dir)
    unreadable: set[tuple[str, ...]] = set()
    why = ""
    for _ in range(_LOAD_ATTEMPTS):
        manifest = read_manifest(index_dir)
        token = generation(index_dir)
        if manifest is None:
            sync_cache(index_dir)  # no cache yet (raises when the index holds nothing)
            continue
        names = tuple(s["name"] for s in manifest["segments"])
        try:
            segments = [VectorIndex(root / name) for name in names]
        except (OSError, ValueError, RuntimeError) as exc:
            why = one_line(exc)
            if names in unreadable:  # damaged, not just replaced as we opened it: build anew
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
        sync_cache(index_dir)  # much committed since: appended to the cache (no rebuild from scratch)
    raise CliptoolError(f"cannot read the search cache at {root} ({why or 'it keeps changing'}); "
                        "run `cliptool check --repair`")


def _live_index(index_dir: Path, manifest: dict[str, Any], segments: list[VectorIndex], stale: bool) -> LiveIndex | None:
    """The segments with their retired rows hidden and, when the stores moved on since the
    manifest (stale), the videos committed since laid over them; None when that is too much."""
    retired = [_retired_mask(e, s) for e, s in zip(manifest["segments"], segments)]
    overlay = _Overlay(sum(s.size for s in segments), np.zeros((0, int(manifest["dim"])), np.float32), [], [])
    videos = sum(len(s.videos) - len(e.get("retired", ())) for e, s in zip(manifest["segments"], segments))
    if stale:
        if any(s.video_states() is None for s in segments):
            return None
        live = _live_map(manifest, segments)
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
                    list(scene.sample_times[: len(vec.frames)]) + [scene.start_time] * (len(vec.frames) - len(scene.sample_times)),
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
        return _numbered_videos(self.segments, [p.video_id for p in self.overlay.positions])

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
        return _top(np.concatenate(all_scores), np.concatenate(all_rows), k)

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
    root = _cache_root(index_dir)
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


# -- one builder at a time ---------------------------------------------------------------------------
def cache_problems(index_dir: Path, expected: dict[str, np.ndarray], records: list[VideoRecord],
                    stale: bool = False) -> list[str]:
    """What is wrong with the live search cache (its segments, retired rows hidden), compared
    with the stores; of a stale cache (commits not yet appended), only the videos it agrees on
    with the stores are compared."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return []
    root = _cache_root(index_dir)
    try:
        segments = [VectorIndex(root / s["name"]) for s in manifest["segments"]]
        ids: list[str] = []
        wrong_vector = ""
        for entry, seg in zip(manifest["segments"], segments):
            hidden = _retired_mask(entry, seg)
            mat = seg.scene_matrix()
            for row, sid in enumerate(seg.scene_ids()):
                if hidden is not None and hidden[row]:
                    continue
                ids.append(sid)
                if not wrong_vector and sid in expected and not np.allclose(mat[row], expected[sid], atol=1e-6):
                    wrong_vector = sid
        live = _live_map(manifest, segments)
    except Exception as exc:  # noqa: BLE001 - any failure to load means a corrupt cache
        return [f"the search cache cannot be read ({type(exc).__name__})"]
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


class _BuildLock:
    """One cache build or update at a time per index (flock: freed on any exit)."""

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
        scenes = store.scenes(video)
        vectors = store.vectors(video)
        n = min(len(scenes), len(vectors))
        videos.append({"video_id": video.video_id, "version": video.version, "path": video.path,
                       "duration": video.duration, "mtime": video.mtime, "rows": n})
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


def _remove_unlisted(root: Path, keep: set[str]) -> None:
    """Deletes every segment no manifest names, and leftovers of interrupted builds. Called only
    by the holder of the build lock, so no other build is in progress; a search that still
    reads a removed segment keeps its open files."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith("CURRENT.") and entry.name.endswith(".tmp"):
            try:
                entry.unlink()
            except OSError:
                pass
