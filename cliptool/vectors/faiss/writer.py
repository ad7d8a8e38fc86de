"""Writing a segment's row files (flat.faiss, frames.npy) from the stores, a row at a time."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.store import IndexStore
from cliptool.vectors.base import row_times
from cliptool.vectors.faiss.segment import FLAT_HEADER


def write_vectors(store: IndexStore, records: list[Any], flat: FlatWriter, frames: NpyWriter
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
            sample_times.extend(row_times(scene.sample_times, count, scene.start_time))
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


class FlatWriter(_RowWriter):
    """Writes float32 vectors straight into the file format of `faiss.write_index(IndexFlatIP)`.

    Layout: fourcc "IxFI", d (int32), ntotal (int64), two int64 placeholders (1 << 20),
    is_trained (uint8), metric type (int32, 0 = inner product), then the vectors: their number
    of floats (uint64) and the raw little-endian float32 rows. Header fields that
    depend on the row count are written when the file is closed. Tests check that FAISS reads it.
    """

    _HEADER_BYTES = FLAT_HEADER.size

    def _header(self) -> bytes:
        d = self.dim or 0
        return FLAT_HEADER.pack(b"IxFI", d, self.rows, 1 << 20, 1 << 20, 1, 0, self.rows * d)


class NpyWriter(_RowWriter):
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
