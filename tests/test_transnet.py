"""TransNetV2 shot detector: real weights, streamed frames, synthetic cuts.

Its cuts on real videos with known cuts (bikes.mp4 through `cliptool keyframes`, the first 450
frames of testvideo.mp4 through cliptool's decode path) are asserted in test_detectors.py, so
each real video goes through the network once per test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.analysis.detect import transnet
from cliptool.analysis.detect.transnet import TransitionCuts, TransNetUnavailableError, TransNetV2Detector
from cliptool.errors import ModelUnavailableError

REPO = Path(__file__).resolve().parents[1]


def _has_weights() -> bool:
    try:
        transnet.find_weights()
    except TransNetUnavailableError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _has_weights(), reason="TransNetV2 weights not installed")


def _run(detector: TransNetV2Detector, frames: list[np.ndarray]) -> list[int]:
    """Pushes frames one at a time; checks cuts come in order and never ahead of the frames,
    and that the detector holds a bounded number of frames."""
    held = transnet.WINDOW + transnet.STEP * (detector.batch_windows - 1)
    cuts: list[int] = []
    for i, frame in enumerate(frames):
        new = detector.push(i, frame)
        assert all(c <= i for c in new)
        assert len(detector._buf) <= held
        cuts.extend(new)
    cuts.extend(detector.flush())
    assert cuts == sorted(set(cuts))
    return cuts


def _synthetic(seed: int = 0, lengths: tuple[int, ...] = (40, 40, 40)) -> list[np.ndarray]:
    """Segments of a fixed smooth random texture each, with fresh noise on every frame (BGR)."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for length in lengths:
        coarse = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8).astype(np.float32)
        base = cv2.resize(coarse, (48, 27), interpolation=cv2.INTER_LINEAR)
        for _ in range(length):
            noisy = base + rng.normal(0.0, 6.0, base.shape)
            frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def test_import_does_not_import_torch():
    code = "import sys, cliptool.analysis.detect.transnet; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_transition_cuts_convention():
    # A cut is the first frame after a run above the threshold.
    probs = np.zeros(100)
    probs[29] = 0.9  # hard cut: the network marks the last frame of the old shot
    probs[60:64] = 0.7  # gradual transition
    probs[70] = 0.6  # too close to the previous cut (64) for min_scene_len=15
    assert TransitionCuts(0.5, 15).feed(probs) == [30, 64]
    assert TransitionCuts(0.5, 0).feed(probs) == [30, 64, 71]
    assert TransitionCuts(0.8, 15).feed(probs) == [30]
    # Fed in pieces, the same.
    tc = TransitionCuts(0.5, 15)
    assert [c for part in np.array_split(probs, 7) for c in tc.feed(part)] == [30, 64]


def test_transition_cuts_edges():
    probs = np.zeros(60)
    probs[0:3] = 0.9  # transition at the very start: no shot before it, no cut
    probs[50:] = 0.9  # transition lasting to the end: no new shot, no cut
    assert TransitionCuts(0.5, 0).feed(probs) == []
    probs = np.zeros(60)
    probs[9] = 0.9  # a first shot of 10 frames is shorter than min_scene_len
    assert TransitionCuts(0.5, 15).feed(probs) == []
    assert TransitionCuts(0.5, 10).feed(probs) == [10]


def test_missing_weights_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(TransNetUnavailableError) as info:
        TransNetV2Detector(weights=tmp_path / "missing.pth")
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, ModelUnavailableError)
    assert "weights not found" in str(info.value) and "\n" not in str(info.value)

    monkeypatch.setattr(transnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TransNetUnavailableError, match="not installed"):
        transnet.find_weights()


def test_bad_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TransNetUnavailableError, match="cannot be loaded") as info:
        TransNetV2Detector(weights=bad)
    assert "\n" not in str(info.value)


@needs_weights
def test_arguments_and_frames_are_checked():
    with pytest.raises(ValueError):
        TransNetV2Detector(threshold=1.5)
    with pytest.raises(ValueError):
        TransNetV2Detector(batch_windows=0)
    detector = TransNetV2Detector()
    assert detector.name == "transnetv2"
    assert detector.frame_size(1920, 1080) == (48, 27)
    assert detector.frame_size(640, 272) == (48, 27)
    with pytest.raises(ValueError, match="shape"):
        detector.push(0, np.zeros((27, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="in order"):
        detector.push(5, np.zeros((27, 48, 3), np.uint8))
    assert detector.flush() == []  # no frames: nothing to do


@needs_weights
def test_synthetic_cuts_and_streaming_equals_reference():
    import torch

    frames = _synthetic(lengths=(40, 40, 20))  # 100 frames: two windows of predictions
    streamed = TransNetV2Detector(keep_probabilities=True)
    cuts = _run(streamed, frames)
    assert cuts == [40, 80]

    # The same frames in one go, through the package's own reference windowing (RGB input).
    rgb = torch.from_numpy(np.ascontiguousarray(np.stack(frames)[..., ::-1]))
    with torch.inference_mode():
        reference, _ = transnet.load_model().predict_frames(rgb, quiet=True)
    assert len(streamed.probabilities) == len(frames)
    np.testing.assert_allclose(streamed.probabilities, reference.numpy(), atol=1e-5)

    # Batching windows changes when cuts come out, not what they are.
    batched = TransNetV2Detector(keep_probabilities=True, batch_windows=2)
    assert _run(batched, frames) == [40, 80]
    np.testing.assert_allclose(batched.probabilities, streamed.probabilities, atol=1e-5)


@needs_weights
def test_video_shorter_than_a_window_and_min_scene_len():
    # 45 frames, cuts 12 frames apart: everything happens in flush().
    frames = _synthetic(seed=1, lengths=(20, 12, 13))
    detector = TransNetV2Detector(min_scene_len=10, keep_probabilities=True)
    assert _run(detector, frames) == [20, 32]
    assert len(detector.probabilities) == 45
    assert TransitionCuts(0.5, 15).feed(detector.probabilities) == [20]


def test_cut_inside_a_fade_from_black_moves_to_the_fade_start() -> None:
    detector = TransNetV2Detector.__new__(TransNetV2Detector)
    detector._brightness = {i: 0.5 for i in range(100)}
    detector._brightness.update({100 + k: 0.5 + 3.0 * (k + 1) for k in range(30)})  # fade in 100-129
    assert detector._fade_in_start(112) == 100
    detector._brightness = {i: 80.0 + (i % 3) for i in range(200)}  # no dark plateau: unchanged
    assert detector._fade_in_start(150) == 150
