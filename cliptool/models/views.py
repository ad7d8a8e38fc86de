"""What the image tower sees of a frame. CLIP takes a square; a frame is rarely one. `VIEWS`:

- "squeeze" (the default): the whole frame squeezed into a square (1 view; shapes widened or
  narrowed, which the measured recall did not suffer from).
- "tiles": overlapping squares across the long side, each as tall (or wide) as the frame, so
  every part of it is seen whole by at least one of them: 1 for a square frame, 2 for 4:3, 3 for
  16:9 and 9:16, 4 for 21:9 (`tile_count`). Each is embedded, kept as a frame-level vector, and
  a frame scores the best of its views.
- "centre": the centre square only (cliptool before views: a 16:9 frame loses 44% of its width).
- "pad": the whole frame letterboxed into a square, beside the centre square (2 views).

Measured (`python -m cliptool.bench --views-only`, 60 toy videos in five frame shapes, a shape
at the centre, the outer fifths or a corner): found 65% with the centre square, 78% squeezed,
80% with tiles or pad; tiles cost 1.29x (1080p) to 1.73x (720p) the centre's index time, a
squeezed frame the same as the centre square. So the default is squeeze.
"""

from __future__ import annotations

import math

import numpy as np

VIEWS = ("squeeze", "tiles", "centre", "pad")
DEFAULT_VIEWS = "squeeze"


def tile_count(width: int, height: int) -> int:
    """Squares across the long side, overlapping by at least half a square."""
    ratio = max(width, height) / max(1, min(width, height))
    return max(1, math.ceil(2 * ratio - 1 - 1e-6))


def view_count(width: int, height: int, views: str) -> int:
    """How many vectors a frame of this size gets."""
    if views == "tiles":
        return tile_count(width, height)
    return 2 if views == "pad" else 1


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    from cliptool.media.decode import area_resize

    if w < rgb.shape[1] and h < rgb.shape[0]:  # halvings first: 2-4x cheaper than one area resize of full HD
        return area_resize(np.ascontiguousarray(rgb), w, h)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)


def _normalised(square: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((square.astype(np.float32) * (1.0 / 255.0) - mean) / std).transpose(2, 0, 1)


def frame_views(rgb: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray, views: str = DEFAULT_VIEWS
                ) -> np.ndarray:
    """The tower's inputs for one RGB uint8 picture: (view_count, 3, size, size) float32."""
    h, w = rgb.shape[:2]
    if views == "squeeze":
        return _normalised(_resize(rgb, size, size), mean, std)[None]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = _resize(rgb, nw, nh)
    centre = resized[(nh - size) // 2:(nh - size) // 2 + size, (nw - size) // 2:(nw - size) // 2 + size]
    if views == "centre":
        return _normalised(centre, mean, std)[None]
    if views == "pad":
        long = max(h, w)
        fit = _resize(rgb, max(1, round(w * size / long)), max(1, round(h * size / long)))
        board = np.zeros((size, size, 3), np.uint8)
        board[:] = np.round(mean * 255).astype(np.uint8)  # letterbox in the tower's mean colour: zero input
        fh, fw = fit.shape[:2]
        board[(size - fh) // 2:(size - fh) // 2 + fh, (size - fw) // 2:(size - fw) // 2 + fw] = fit
        return np.stack([_normalised(centre, mean, std), _normalised(board, mean, std)])
    if views != "tiles":
        raise ValueError(f"unknown views {views!r} (choose from {', '.join(VIEWS)})")
    n = tile_count(w, h)
    if n == 1:
        return _normalised(centre, mean, std)[None]
    span = (nw if nw >= nh else nh) - size
    offsets = [round(span * i / (n - 1)) for i in range(n)]
    tiles = [resized[:, o:o + size] if nw >= nh else resized[o:o + size, :] for o in offsets]
    return np.stack([_normalised(t, mean, std) for t in tiles])


def per_sample(rows: int, samples: int) -> int:
    """Views per sample of a scene that stores `rows` frame vectors for `samples` samples (1 for
    an index made before views, or whenever the rows are not a whole multiple)."""
    if samples <= 0 or rows <= samples or rows % samples:
        return 1
    return rows // samples


def whole(vectors: np.ndarray) -> np.ndarray:
    """One vector for a picture from its views: their normalised mean."""
    mean = np.asarray(vectors, dtype=np.float32).reshape(-1, vectors.shape[-1]).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)
