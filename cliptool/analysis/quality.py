"""Cheap measures of whether a frame carries information: blank, near-black/white, flat, blurry.

All measures run on a small BGR copy of the frame (about 256 pixels wide, the same small frames
the decode pass makes anyway), on its luma:

- ``mean``/``std``: luma mean and standard deviation (0-255).
- ``p1``/``p99``: 1st and 99th luma percentiles, so a few bright or dark pixels (a logo, noise)
  do not hide an otherwise black or white frame.
- ``edges``: fraction of pixels whose Sobel gradient magnitude exceeds ``EDGE_MAGNITUDE``.
- ``sharpness``: variance of the Laplacian. Its scale depends on content, so blur is judged
  relative to the frames around it (see ``blurry``), never against one number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

BLACK_P99 = 40.0  # 99% of pixels at most this bright: near-black
WHITE_P1 = 225.0  # 99% of pixels at least this bright: near-white
SOLID_STD = 6.0  # luma standard deviation below this: one solid colour (compression noise aside)
EDGE_MAGNITUDE = 32.0  # Sobel magnitude that counts as an edge pixel
LOW_DETAIL_EDGES = 0.002  # fewer edge pixels than this fraction: no detail to speak of
BLUR_RATIO = 0.3  # sharpness below this fraction of the median around it: blurry
BLUR_WINDOW = 6  # frames on each side that make up "around it"
BLUR_MIN_FRAMES = 3  # videos with fewer measured frames are not judged for blur


@dataclass(frozen=True)
class FrameQuality:
    mean: float
    std: float
    p1: float
    p99: float
    edges: float
    sharpness: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def measure(small_bgr: np.ndarray) -> FrameQuality:
    """Quality measures of a small uint8 BGR frame."""
    gray = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
    p1, p99 = np.percentile(gray, (1, 99))
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    edges = float(np.mean(gx * gx + gy * gy > EDGE_MAGNITUDE * EDGE_MAGNITUDE))
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    return FrameQuality(
        mean=float(gray.mean()), std=float(gray.std()), p1=float(p1), p99=float(p99),
        edges=edges, sharpness=float(lap.var()),
    )


def blank_reason(q: FrameQuality) -> str | None:
    """Why a frame carries no picture ("black", "white", "solid colour", "low detail"), or None."""
    if q.p99 <= BLACK_P99:
        return "black"
    if q.p1 >= WHITE_P1:
        return "white"
    if q.std < SOLID_STD:
        return "solid colour"
    if q.edges < LOW_DETAIL_EDGES:
        return "low detail"
    return None


def blurry(sharpness: list[float], ratio: float = BLUR_RATIO, window: int = BLUR_WINDOW) -> list[bool]:
    """Which frames (in time order) are blurry: sharpness below `ratio` times the median of the
    frames around them (`window` on each side). Scene cuts are ignored on purpose: a fast camera
    move often makes a detector cut around its blurred frames."""
    s = np.asarray(sharpness, dtype=np.float64)
    if len(s) < BLUR_MIN_FRAMES:
        return [False] * len(s)
    medians = np.empty(len(s))
    width = 2 * window + 1
    if len(s) >= width:
        medians[window : len(s) - window] = np.median(np.lib.stride_tricks.sliding_window_view(s, width), axis=1)
    for i in [*range(min(window, len(s))), *range(max(window, len(s) - window), len(s))]:
        medians[i] = np.median(s[max(0, i - window) : i + window + 1])
    return (s < ratio * medians).tolist()


def local_median(sharpness: list[float], i: int, window: int = BLUR_WINDOW) -> float:
    return float(np.median(sharpness[max(0, i - window) : i + window + 1]))
