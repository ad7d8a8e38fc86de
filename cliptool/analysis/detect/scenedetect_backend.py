"""Shot detectors backed by PySceneDetect's content, adaptive and threshold detectors."""

from __future__ import annotations

import numpy as np

from cliptool.media.decode import detect_size
from cliptool.analysis.detect.base import ShotDetector

# Nominal rate for PySceneDetect's timecodes: we feed frame numbers and map them to
# presentation times ourselves, so the rate only scales frame counts and never reaches a time.
_NOMINAL_FPS = 1000.0


class PySceneDetectDetector(ShotDetector):
    """Feeds frames one at a time to a PySceneDetect detector."""

    def __init__(self, kind: str, threshold: float | None, min_scene_len: int, detect_width: int) -> None:
        from scenedetect import detectors

        classes = {
            "content": detectors.ContentDetector,
            "adaptive": detectors.AdaptiveDetector,
            "threshold": detectors.ThresholdDetector,
        }
        threshold_arg = "adaptive_threshold" if kind == "adaptive" else "threshold"
        kwargs: dict[str, object] = {"min_scene_len": min_scene_len}
        if threshold is not None:
            kwargs[threshold_arg] = threshold
        self.name = kind
        self._detector = classes[kind](**kwargs)
        self._detect_width = detect_width
        self._last = 0

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        return detect_size(width, height, self._detect_width)

    def _timecode(self, index: int):  # type: ignore[no-untyped-def]
        from scenedetect import FrameTimecode

        return FrameTimecode(index, fps=_NOMINAL_FPS)

    def push(self, index: int, frame_bgr: np.ndarray) -> list[int]:
        self._last = index
        return [tc.frame_num for tc in self._detector.process_frame(self._timecode(index), frame_bgr)]

    def flush(self) -> list[int]:
        return [tc.frame_num for tc in self._detector.post_process(self._timecode(self._last))]
