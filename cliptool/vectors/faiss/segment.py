"""One segment of the FAISS cache: a folder written once (flat.faiss, frames.npy, table.npz,
videos.json, meta.json, maybe approx.faiss), opened read-only and memory-mapped, scored exactly
(on two cores past a size) or through its approximate index with exact re-ranking."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.config import usable_cores
from cliptool.errors import CliptoolError
from cliptool.vectors.base import ScenePosition, VideoFilter

LOAD_ATTEMPTS = 5


_SPLIT_ROWS = 20_000  # from here on a query scans its halves on two cores (9-10 -> 5-8 ms at 100k)


FLAT_HEADER = struct.Struct("<4siqqqBiQ")


APPROX_CANDIDATES = 100  # candidates an approximate segment returns for exact re-ranking (at least)


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


class SegmentDamagedError(ValueError):
    """A file of a segment does not match the checksum its manifest records."""


def verify_files(directory: Path, files: dict[str, str], full: bool = False) -> None:
    """Checks a segment's files against the checksums its manifest records (once per change of
    a file, or every time with `full`: see durable.first_damaged); SegmentDamagedError names the
    first that differs."""
    from cliptool import durable

    bad = durable.first_damaged(directory, files, full)
    if bad is not None:
        raise SegmentDamagedError(f"search cache segment {directory.name}: {bad} fails its checksum")


def checksum_files(directory: Path) -> dict[str, str]:
    """The checksum of every file of a segment just written (for its manifest entry), stamped
    as verified."""
    from cliptool import durable

    files = {path.name: durable.digest(path) for path in sorted(directory.iterdir())
             if path.is_file() and not path.name.startswith(".")}
    durable.stamp_verified(directory, files)
    return files


def open_segment(directory: Path, files: dict[str, str] | None = None, full: bool = False) -> VectorIndex:
    """A segment, its files checked first against `files` (the checksums its manifest records;
    None for a cache written before them): a damaged one is a SegmentDamagedError, never served."""
    if files:
        verify_files(directory, files, full)
    return VectorIndex(directory)


class CacheChangedError(CliptoolError):
    """A segment this process opened was merged away and removed before it read all of it:
    load the cache again (`load_vector_index`) and repeat the query."""


def numbered_videos(segments: list[VectorIndex], extra: Iterable[str] = ()) -> tuple[list[str], np.ndarray]:
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


def top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
            head = f.read(FLAT_HEADER.size)
        if len(head) != FLAT_HEADER.size:
            raise ValueError(f"{path} is truncated")
        fourcc, dim, rows, _, _, _, metric, floats = FLAT_HEADER.unpack(head)
        if fourcc != b"IxFI" or metric != 0 or floats != rows * dim or \
                path.stat().st_size != FLAT_HEADER.size + 4 * rows * dim:
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
            self._vectors = np.memmap(self.directory / "flat.faiss", dtype="<f4", mode="r", offset=FLAT_HEADER.size,
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
        return numbered_videos([self])

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
        params = ivf_params(info, int(info["nprobe"]))
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
        return top(exact.astype(np.float32), rows.astype(np.int64), k)

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
        return top(scores[keep_rows], rows[keep_rows], k)

    def describe(self) -> dict[str, Any]:
        """The kind of index of this segment, its parameters and measured recall."""
        info = self.meta.get("approx")
        if not info:
            return {"kind": "exact", "rows": self.size}
        return {"kind": "approximate", "rows": self.size, **info}


MERGE_CHUNK = 65_536


def ivf_params(info: dict[str, Any], nprobe: int) -> Any:
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
