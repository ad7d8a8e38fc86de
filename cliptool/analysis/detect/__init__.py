"""Stage 3: shot detection. One module per detector behind `ShotDetector`."""

from __future__ import annotations

from cliptool.analysis.detect.base import ShotDetector

DETECTORS = ("content", "adaptive", "threshold", "transnetv2")


def make_detector(
    name: str, threshold: float | None = None, min_scene_len: int = 15, detect_width: int = 256
) -> ShotDetector:
    """Builds the named detector; raises ValueError for an unknown name."""
    if name in ("content", "adaptive", "threshold"):
        from cliptool.analysis.detect.scenedetect_backend import PySceneDetectDetector

        return PySceneDetectDetector(name, threshold, min_scene_len, detect_width)
    if name == "transnetv2":
        from cliptool.analysis.detect.transnet import TransNetV2Detector

        kwargs: dict[str, float | int] = {"min_scene_len": min_scene_len}
        if threshold is not None:
            kwargs["threshold"] = threshold
        return TransNetV2Detector(**kwargs)
    raise ValueError(f"unknown detector {name!r} (choose from {', '.join(DETECTORS)})")


__all__ = ["DETECTORS", "ShotDetector", "make_detector"]
