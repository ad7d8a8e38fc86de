"""Scene cuts on real videos with known cuts, and on generated videos, through cliptool's decode path."""

from pathlib import Path

import numpy as np
import pytest

from conftest import make_samples, shared
from cliptool.media.decode import VideoReader, detect_bgr
from cliptool.analysis.detect import make_detector


def detect(path: Path, name: str = "content") -> tuple[list[int], dict[int, float]]:
    detector = make_detector(name)
    cuts: list[int] = []
    times: dict[int, float] = {}
    with VideoReader(path) as reader:
        size = detector.frame_size(reader.info.width, reader.info.height)
        for f in reader.frames():
            times[f.index] = f.time
            cuts += detector.push(f.index, detect_bgr(f.av_frame, size))
    return cuts + detector.flush(), times


def assert_cuts(found: list[int], truth: list[int], tolerance: int = 1) -> None:
    assert len(found) == len(truth), f"found {found}, expected {truth}"
    for f, t in zip(found, truth):
        assert abs(f - t) <= tolerance, f"found {found}, expected {truth}"


@pytest.mark.parametrize(
    "video,detector,truth",
    [
        ("bikes.mp4", "content", [30, 76, 137, 187, 242]),
        ("testvideo.mp4", "content", [30, 180, 394]),
        ("fades.mp4", "threshold", [84, 167]),
        ("fades.mp4", "content", []),  # a flat fade: no false cuts from colour rounding
    ],
)
def test_cuts_match_ground_truth(video: str, detector: str, truth: list[int]) -> None:
    cuts, _ = detect(shared("scenes", video), detector)
    assert_cuts(cuts, truth)


def test_vfr_cut_has_true_time() -> None:
    cuts, times = detect(shared("scenes", "goldeneye-vfr-drop3.mp4"))
    assert times[cuts[0]] == pytest.approx(3.754, abs=0.05)


def noisy(colour: tuple[int, int, int], seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(240, 320, 3))

    def paint(i: int, w: int, h: int) -> np.ndarray:
        img = np.clip(base + np.array(colour) + rng.integers(-6, 7, size=base.shape), 0, 255).astype(np.uint8)
        return np.roll(img, i, axis=1)

    return paint


def test_cuts_in_generated_video(tmp_path: Path) -> None:
    clip = tmp_path / "gen.mp4"
    truth = make_samples.write_clip(
        clip, [(noisy((200, 20, 20), 1), 40), (noisy((20, 120, 20), 2), 33), (noisy((30, 30, 230), 3), 50), (noisy((180, 180, 0), 4), 25)]
    )
    assert truth == [40, 73, 123]
    cuts, _ = detect(clip)
    assert_cuts(cuts, truth)
