"""The interface every shot detector implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ShotDetector(ABC):
    """Finds cuts in a stream of small frames fed in decode order.

    A cut is the 0-based index of the first frame of a new shot. Detectors may report a cut
    some frames after it happened (they look ahead), but never out of order.
    """

    name: str = ""

    @abstractmethod
    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) of the BGR frames this detector wants for a video of that size."""

    @abstractmethod
    def push(self, index: int, frame_bgr: np.ndarray) -> list[int]:
        """Takes frame `index` (uint8 BGR, HxWx3 at `frame_size`); returns cuts found so far."""

    def flush(self) -> list[int]:
        """Called after the last frame; returns any cuts still held back."""
        return []
