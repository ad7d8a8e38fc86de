"""The one interface a search asks of its vectors, whichever backend holds them (the FAISS cache
or a Milvus collection): rows are scenes; a search scores rows, optionally only those a filter
lets through (a boolean row mask for FAISS, an expression for Milvus), and reads back where a
row points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class ScenePosition:
    """Where a row points: one scene of one video."""

    row: int
    scene_id: str
    video_id: str
    path: str
    scene_index: int
    start_time: float
    end_time: float
    sample_times: list[float]
    continues_shot: bool = False  # a window of a long shot after its first (no cut before it)


def row_times(sample_times: list[float], rows: int, start_time: float) -> list[float]:
    """The time of each of a scene's frame rows: each sample's time once per view of it when the
    rows are a whole multiple of the samples (models.views), else the sample times padded with
    the scene's start (a tap's frames, an old index)."""
    samples = len(sample_times)
    if samples and rows > samples and rows % samples == 0:
        return [t for t in sample_times for _ in range(rows // samples)]
    return list(sample_times[:rows]) + [start_time] * (rows - samples)


class VideoFilter(Protocol):
    """Which videos may answer (see search.filters.Filters): real folders, file dates, lengths."""

    under: tuple[str, ...]
    since: float | None
    until: float | None
    min_duration: float | None
    max_duration: float | None


class VectorBackend(Protocol):
    """What search, similar and the web app ask of a backend's rows."""

    meta: dict[str, Any]

    @property
    def size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def model_spec(self) -> dict[str, str]: ...

    def describe(self) -> dict[str, Any]: ...

    def scores(self, query: np.ndarray, k: int, allowed: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-k rows by scene vector (scores, rows), among `allowed` rows if given."""

    def frame_candidates(self, query: np.ndarray, k: int, limit: int, allowed: Any = None) -> list[int]:
        """Rows whose best frame vectors match `query`, when the backend scans frames (else [])."""

    def position(self, row: int) -> ScenePosition: ...

    def scene_vector(self, row: int) -> np.ndarray: ...

    def frame_vectors(self, row: int) -> np.ndarray: ...

    def row_of_scene(self, scene_id: str) -> int | None: ...

    def rows_of_video(self, video_id: str) -> np.ndarray: ...

    def row_videos(self) -> tuple[list[str], Any]:
        """The backend's videos and, for each row, the number of its video in that list (-1 for
        a row hidden since it was written)."""

    def listed_videos(self) -> list[dict[str, Any]]:
        """The videos the backend lists with their facts (path, mtime, duration), or [] when it
        cannot vouch for them all (the stores then answer)."""

    def native_filter(self, where: VideoFilter) -> Any | None:
        """The backend's own form of a filter (Milvus: an expression), or None for a row mask."""
