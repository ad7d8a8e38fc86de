"""Words on screen (cliptool.analysis.words.screen): words drawn into a clip at known times,
places, sizes and fonts are read with their boxes; frames without text are left to the detector."""

from __future__ import annotations

import shutil

import pytest

from conftest import data_module, shared
from cliptool.analysis.words.screen import read_screen_text, text_regions
from cliptool.errors import ModelUnavailableError

tv = data_module("talking_videos")
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="needs tesseract-ocr (make install-tools)")


@pytest.fixture(scope="session")
def word_clip(tmp_path_factory: pytest.TempPathFactory):
    """A silent 640x360 clip showing four words in turn (24-60 px capitals, four fonts), and its
    decoded frames."""
    import av

    clip = tv.word_clip(tmp_path_factory.mktemp("screen") / "words.mp4", ["Station", "HELLO", "coffee", "Garden"],
                        seed=3)
    with av.open(str(clip.path)) as c:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return clip, frames


def overlap(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def inside(a: tuple, b: tuple) -> float:
    """The share of box a that lies in box b."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / (a[2] * a[3])


@needs_tesseract
def test_words_are_read_at_their_times_and_places(word_clip) -> None:
    clip, frames = word_clip
    assert min(s.height_px for s in clip.shown) >= 24 and len(clip.shown) == 4
    words = read_screen_text(frames)
    assert all(w.source == "screen" and w.language == "en" and w.start == w.end for w in words)
    assert all(w.confidence is not None and 0.6 <= w.confidence <= 1 for w in words)
    times = {t for t, _ in frames}
    assert all(w.start in times for w in words)
    for shown in clip.shown:
        on = [t for t, _ in frames if shown.start <= t < shown.end]
        read = [w for w in words if w.text == shown.text]
        assert sorted(w.start for w in read) == on, (shown, [(w.start, w.text) for w in words])  # every frame it is on
        for w in read:
            assert overlap(w.box, shown.box) > 0.6, (w.box, shown.box)
    assert {w.text for w in words} == {s.text for s in clip.shown}  # nothing read that was not shown


def test_frames_without_text_are_left_to_the_detector(word_clip) -> None:
    clip, frames = word_clip
    for t, rgb in frames:
        on = any(s.start <= t < s.end for s in clip.shown)
        regions = text_regions(rgb)
        assert bool(regions) == on, t
        if on:  # every region it finds lies on the word (it may find the word in parts)
            shown = next(s for s in clip.shown if s.start <= t < s.end)
            h, w = rgb.shape[:2]
            for r in regions:
                box = (r.x / w, r.y / h, r.w / w, r.h / h)
                assert inside(box, shown.box) > 0.7, (box, shown.box)
    blank = [(t, rgb) for t, rgb in frames if not any(s.start <= t < s.end for s in clip.shown)]
    assert blank and read_screen_text(blank, languages="no-such-language") == []  # tesseract never started


def test_photos_without_text_are_left_to_the_detector() -> None:
    import cv2

    for name in ("camera.png", "moon.png", "horse.png", "brick.png"):
        bgr = cv2.imread(str(shared("images", name)))
        assert text_regions(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) == [], name


@needs_tesseract
def test_a_missing_language_is_one_line(word_clip) -> None:
    _, frames = word_clip
    with_text = [(t, rgb) for t, rgb in frames if text_regions(rgb)][:1]
    with pytest.raises(ModelUnavailableError) as err:
        read_screen_text(with_text, languages="eng+xyz")
    assert "xyz" in str(err.value) and "tesseract-ocr-xyz" in str(err.value) and "\n" not in str(err.value)


@needs_tesseract
def test_a_picture_pass_reads_the_screen_as_it_decodes(word_clip) -> None:
    """The index run's way: frames offered to a ScreenTap as the picture pass decodes them are
    read every half second beside it, each word spanning the times it was seen."""
    from cliptool.analysis.words.extract import ScreenTap
    from cliptool.config import IndexOptions
    from cliptool.media.decode import VideoReader

    clip, _ = word_clip
    told = []
    tap = ScreenTap(IndexOptions(words="screen"), progress=lambda: told.append(1))
    with VideoReader(clip.path) as reader:
        for frame in reader.frames():
            tap.offer(frame)
    words = tap.finish()
    assert sorted(w.text for w in words) == sorted(s.text for s in clip.shown)
    for shown in clip.shown:
        w = next(w for w in words if w.text == shown.text)
        assert shown.start - 0.3 <= w.start <= w.end <= shown.end + 0.3, (w, shown)
    tap.abort()  # after finish: nothing left to stop
    stopped = ScreenTap(IndexOptions(words="screen"))
    stopped.abort()  # a failed pass: the reader ends without a frame
    assert stopped.finish() == []
