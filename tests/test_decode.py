"""Decoding: true presentation times, frame-accurate seeking, small frames for detection."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import make_samples, shared
from cliptool.media.decode import VideoReader, detect_bgr, detect_size, small_bgr, to_rgb
from cliptool.errors import UsageError, VideoError
from cliptool.media.decode import frame_at


def test_counter_frames_have_exact_times() -> None:
    with VideoReader(shared("scenes", "counter.mp4")) as reader:
        times = [f.time for f in reader.frames()]
    assert len(times) == 30
    assert times == pytest.approx([i / 10 for i in range(30)], abs=1e-6)


@pytest.mark.parametrize("t,expected", [(0.0, 0), (1.5, 15), (1.549, 15), (1.55, 15), (2.0, 20), (2.95, 29), (3.0, 29)])
def test_frame_at_is_frame_accurate_on_counter(t: float, expected: int) -> None:
    path = shared("scenes", "counter.mp4")
    with VideoReader(path) as reader:
        reference = [to_rgb(f.av_frame) for f in reader.frames()]
    time, rgb = frame_at(path, t)
    assert time == pytest.approx(expected / 10, abs=1e-6)
    assert np.array_equal(rgb, reference[expected])


@pytest.mark.parametrize("t", [3.2, 99.0])
def test_frame_at_past_the_end_names_the_length(t: float) -> None:
    with pytest.raises(UsageError, match=r"is past the end of the video \(00:00:03.000 long\)"):
        frame_at(shared("scenes", "counter.mp4"), t)


@pytest.mark.parametrize("folder,name", [("content", "cockatoo.mp4"), ("scenes", "testvideo.mp4"), ("scenes", "bikes.mp4")])
def test_frame_at_equals_sequential_decoding_past_later_key_frames(folder: str, name: str) -> None:
    """A seek lands on a later key frame and still decodes it exactly. cockatoo.mp4 (x264 4:4:4
    from an old build) decoded green there until the decoder was shown the first frame's SEI."""
    path = shared(folder, name)
    with VideoReader(path) as reader:
        frames = [(f.time, to_rgb(f.av_frame)) for f in reader.frames()]
    times = [t for t, _ in frames]
    for fraction in (0.3, 0.55, 0.8, 0.97):
        i = int(len(frames) * fraction)
        t = times[i] + 0.3 * (times[i + 1] - times[i]) if i + 1 < len(times) else times[i]
        time, rgb = frame_at(path, t)
        assert time == pytest.approx(times[i], abs=1e-6)
        assert np.array_equal(rgb, frames[i][1]), f"{name} at {t:.3f} s differs from sequential decoding"


@pytest.mark.parametrize("folder,name", [("content", "cockatoo.mp4"), ("content", "pool_cleaning.mp4"), ("scenes", "testvideo.mp4")])
def test_skipping_deblocking_leaves_frames_and_times_all_but_equal(folder: str, name: str) -> None:
    """Analysis skips the deblocking filter on non-reference frames only: no frame is lost or
    moved, and no error spreads to later frames (on cockatoo, skipping it on every frame drifts
    by 3 levels on average)."""
    path = shared(folder, name)
    decoded = {}
    for skip in (False, True):
        with VideoReader(path, skip_deblocking=skip) as reader:
            decoded[skip] = [(f.time, to_rgb(f.av_frame)) for f in reader.frames() if f.index % 5 == 0]
    assert [t for t, _ in decoded[True]] == [t for t, _ in decoded[False]]
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for (_, a), (_, b) in zip(decoded[False], decoded[True])]
    assert max(diffs) < 1.0 and float(np.mean(diffs)) < 0.3


def test_variable_frame_rate_times_come_from_timestamps() -> None:
    with VideoReader(shared("scenes", "goldeneye-vfr-drop3.mp4")) as reader:
        frames = [(f.index, f.time) for f in reader.frames()]
    assert len(frames) == 160
    steps = np.diff([t for _, t in frames])
    assert steps.max() > 1.5 * np.median(steps)  # dropped frames show as longer gaps
    assert frames[60][1] == pytest.approx(3.754, abs=0.002)  # not 60 / average fps


def test_small_frames_match_a_full_conversion(tmp_path: Path) -> None:
    path = shared("scenes", "bikes.mp4")
    with VideoReader(path) as reader:
        size = detect_size(reader.info.width, reader.info.height, 256)
        for f in reader.frames():
            if f.index == 100:
                small = small_bgr(f.av_frame, size)
                reference = f.av_frame.reformat(width=size[0], height=size[1], format="bgr24").to_ndarray()
                break
    assert small.shape == reference.shape == (size[1], size[0], 3)
    assert np.abs(small.astype(int) - reference).mean() < 4


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p"])
@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080), (640, 360)])
def test_detection_frames_are_the_picture_subsampled(fmt: str, width: int, height: int) -> None:
    import av

    rng = np.random.default_rng(width)
    blocks = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(np.repeat(np.repeat(blocks, 40, 0), 40, 1)[:height, :width])  # flat 40 px blocks
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
    size = detect_size(width, height, 256)
    small = detect_bgr(frame, size)
    assert small.shape == (size[1], size[0], 3)
    step = min(width // size[0], height // size[1])
    expected = cv2.resize(np.ascontiguousarray(rgb[::step, ::step][:, :, ::-1]), size, interpolation=cv2.INTER_LINEAR)
    assert np.median(np.abs(small.astype(int) - expected)) <= 3  # off only at block edges (chroma siting)
    for value in (0, 255):  # black stays black, white stays white, in either range
        flat = av.VideoFrame.from_ndarray(np.full((height, width, 3), value, np.uint8), format="rgb24").reformat(format=fmt)
        assert np.abs(detect_bgr(flat, size).astype(int) - value).max() <= 3


def test_black_frames_are_black_after_range_conversion(tmp_path: Path) -> None:
    clip = tmp_path / "black.mp4"
    make_samples.write_clip(clip, [(lambda i, w, h: np.zeros((h, w, 3), np.uint8), 5)])
    with VideoReader(clip) as reader:
        frame = next(reader.frames())
        assert small_bgr(frame.av_frame, (64, 48)).max() <= 8


def test_garbage_file_raises_video_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="bad.mp4"):
        with VideoReader(bad) as reader:
            list(reader.frames())
