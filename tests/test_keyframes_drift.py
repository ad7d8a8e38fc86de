"""A slow zoom is one picture: a Ken Burns slideshow of real photos gives one keyframe per photo,
and two different photos in one shot (a crossfade, no cut) are still two."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cliptool.analysis.keyframes import KeyframeOptions, extract_keyframes

from conftest import make_samples, shared

FPS = 25
W, H = 320, 240
HOLD = 3 * FPS  # each photo 3 s
ZOOM = 0.08  # zooming in by 8% over a photo's 3 s
PHOTOS = ["astronaut", "coffee", "rocket", "chelsea", "page", "coins"]


def _photo(name: str) -> np.ndarray:
    folder = shared("images")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg")}
    if name not in files:
        pytest.skip(f"shared photo missing: {name}")
    image = cv2.cvtColor(cv2.imread(str(files[name])), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (2 * W, 2 * H), interpolation=cv2.INTER_AREA)


def ken_burns(name: str, frames: int = HOLD, seed: int = 0):  # type: ignore[no-untyped-def]
    """The photo zooming in steadily by ZOOM over `frames`, with a little sensor-like noise."""
    image = _photo(name)
    ih, iw = image.shape[:2]

    def paint(i: int, w: int, h: int) -> np.ndarray:
        scale = 1 + ZOOM * i / max(1, frames - 1)
        cw, ch = iw / scale, ih / scale
        x0, y0 = (iw - cw) / 2, (ih - ch) / 2
        m = np.float32([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]])
        frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_AREA)
        noise = np.random.default_rng(seed * 1000 + i).normal(0, 2, frame.shape)
        return np.clip(frame + noise, 0, 255).astype(np.uint8)

    return paint


def crossfade(a, b, frames: int):  # type: ignore[no-untyped-def]
    def paint(i: int, w: int, h: int) -> np.ndarray:
        t = (i + 1) / (frames + 1)
        return np.clip((1 - t) * a(HOLD - 1, w, h) + t * b(0, w, h), 0, 255).astype(np.uint8)

    return paint


@pytest.fixture(scope="module")
def clip_model(tiny_model: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec

    return ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1])))


def _keyframes(video: Path, out: Path, model) -> dict:  # type: ignore[no-untyped-def]
    return extract_keyframes(video, out, lambda: model, model.spec.identity(), KeyframeOptions(use_index=False),
                             progress=False)


def test_ken_burns_slideshow_gives_one_keyframe_per_photo(clip_model, tmp_path: Path) -> None:
    video = tmp_path / "kenburns.mp4"
    make_samples.write_clip(video, [(ken_burns(n, seed=k), HOLD) for k, n in enumerate(PHOTOS)], fps=FPS,
                            size=(W, H))
    manifest = _keyframes(video, tmp_path / "out", clip_model)
    shown = [k["frame"] // HOLD for k in manifest["keyframes"]]
    assert shown == list(range(len(PHOTOS))), (shown, manifest["threshold"])


def test_two_photos_in_one_shot_are_two_keyframes(clip_model, tmp_path: Path) -> None:
    fade = FPS  # a one-second crossfade, no cut
    a, b = ken_burns("astronaut", seed=1), ken_burns("rocket", seed=2)
    video = tmp_path / "dissolve.mp4"
    make_samples.write_clip(video, [(a, HOLD), (crossfade(a, b, fade), fade), (b, HOLD)], fps=FPS, size=(W, H))
    manifest = _keyframes(video, tmp_path / "out", clip_model)
    assert len(manifest["scenes"]) == 1, manifest["scenes"]  # the detector sees one shot
    frames = [k["frame"] for k in manifest["keyframes"]]
    assert len(frames) == 2 and frames[0] < HOLD and frames[1] >= HOLD + fade, (frames, manifest["threshold"])
