"""A world of shapes: filled circles, squares, triangles and stars in four colours, drawn on
varied backgrounds and passed through video-like compression. The toy CLIP is trained on it
(`train_toy_clip.py`), and tests and the demo draw their clips from it. Pictures that hold no
shape (`render_empty`: a background alone, captioned by its kind in EMPTY_CAPTIONS) can be mixed in
(`render_set(..., empty_share=)`); CAPTIONS stays the 16 shape captions.

Nothing here needs the network; backgrounds use the real photos of `../shared/testdata` when
that folder exists, and noise, gradients and flat colours always.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {  # RGB centres; each drawing jitters them
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 40),
}
CAPTIONS = [f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS]
# Pictures that hold no shape, one caption per kind of background (what `background` draws), so
# that the toy CLIP has somewhere else to put them than near the shape caption they most resemble.
EMPTY_KINDS = ("photo", "noise", "gradient", "flat")
EMPTY_CAPTIONS = ["a photo", "noise", "a gradient", "a flat colour"]  # EMPTY_CAPTIONS[i] names EMPTY_KINDS[i]
ALL_CAPTIONS = CAPTIONS + EMPTY_CAPTIONS  # render_set's labels index this; < len(CAPTIONS) is a shape
MIN_CONTRAST = 60  # summed |RGB difference| between a shape and the mean of the background under it
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "images"


def caption(shape: str, colour: str) -> str:
    return f"a {colour} {shape}"


def load_photos(folder: Path = PHOTOS, size: int = 256) -> list[np.ndarray]:
    """The real photos available for backgrounds (RGB, shorter side `size`); [] when absent."""
    photos = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.suffix.lower() in (".jpg", ".jpeg", ".png") else None
            if bgr is None:
                continue
            scale = size / min(bgr.shape[:2])
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return photos


def jittered(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour], dtype=np.float64)
    out = base * rng.uniform(0.8, 1.12) + rng.normal(0, 12, 3)
    return tuple(int(v) for v in np.clip(out, 0, 255))  # type: ignore[return-value]


def background(rng: np.random.Generator, w: int, h: int, photos: Sequence[np.ndarray] = (),
               kind: str | None = None) -> np.ndarray:
    """A random background: a real photo crop, noise, a gradient or a flat colour (one of
    EMPTY_KINDS; drawn at random unless `kind` is given; "photo" needs photos)."""
    if kind is None:
        kinds = ["photo", "noise", "gradient", "flat"] if photos else ["noise", "gradient", "flat"]
        kind = kinds[int(rng.integers(len(kinds)))]
    elif kind not in EMPTY_KINDS or (kind == "photo" and not photos):
        raise ValueError(f"no background of kind {kind!r}" + (" without photos" if kind == "photo" else ""))
    if kind == "photo":
        photo = photos[int(rng.integers(len(photos)))]
        ph, pw = photo.shape[:2]
        cw = int(rng.uniform(0.35, 1.0) * min(pw, ph * w / h))
        ch = max(2, int(cw * h / w))
        x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        out = cv2.resize(photo[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)
    if kind == "noise":
        base = rng.uniform(0, 255, 3)
        small = rng.normal(0, rng.uniform(10, 60), (max(2, h // int(rng.integers(2, 16))), max(2, w // int(rng.integers(2, 16))), 3))
        noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) + rng.normal(0, rng.uniform(0, 15), (h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    if kind == "gradient":
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        return (a * (1 - t) + b * t).astype(np.uint8)
    return np.full((h, w, 3), rng.uniform(0, 255, 3), dtype=np.uint8)


def shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices of a square, triangle or star of circumradius r (pixels), turned by angle."""
    if shape == "square":
        k, radii = 4, [r]
    elif shape == "triangle":
        k, radii = 3, [r]
    elif shape == "star":
        k, radii = 5, [r, r * 0.42]
    else:
        raise ValueError(shape)
    pts = []
    n = k * len(radii)
    for i in range(n):
        a = angle + 2 * math.pi * i / n
        rad = radii[i % len(radii)]
        pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
    return np.array(pts)


def draw_shape(img: np.ndarray, shape: str, rgb: tuple[int, int, int], cx: float, cy: float, height: float,
               angle: float) -> None:
    """Draws a filled shape whose height is about `height` pixels, centred at (cx, cy), in place."""
    shift = 4  # sub-pixel precision
    s = 1 << shift
    if shape == "circle":
        cv2.circle(img, (int(cx * s), int(cy * s)), int(height / 2 * s), rgb, -1, cv2.LINE_AA, shift)
        return
    r = {"square": height / 2 * math.sqrt(2) / 1.2, "triangle": height / 1.5, "star": height / 1.9}[shape]
    pts = shape_points(shape, cx, cy, r, angle)
    cv2.fillPoly(img, [np.round(pts * s).astype(np.int32)], rgb, cv2.LINE_AA, shift)


def compress(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Video-like damage: softening, resampling and JPEG blocks at a random quality."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        h, w = img.shape[:2]
        f = rng.uniform(0.5, 0.9)
        img = cv2.resize(cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA),
                         (w, h), interpolation=cv2.INTER_LINEAR)
    quality = int(rng.integers(25, 95))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else img


def canvas(big: int, aspect: float) -> tuple[int, int]:
    """Width and height of a frame of that shape (width / height) whose short side is `big`."""
    return (round(big * aspect), big) if aspect >= 1 else (big, round(big / aspect))


def render(rng: np.random.Generator, shape: str, colour: str, size: int = 64, photos: Sequence[np.ndarray] = (),
           oversample: int = 2, aspect: float = 1.0) -> np.ndarray:
    """One training or test picture: a shape of 15-60% of the height, anywhere, any rotation.
    With an `aspect` other than 1 it is drawn in a frame of that shape, then squeezed to a square
    as cliptool's default view squeezes a whole frame (shapes from 10% of the short side)."""
    big = size * oversample
    w, h = canvas(big, aspect)
    height = rng.uniform(0.15 if aspect == 1.0 else 0.1, 0.6) * big
    margin = height / 2
    cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
    rgb = jittered(colour, rng)
    for _ in range(20):  # a shape must stand out from what lies under it
        img = background(rng, w, h, photos)
        y0, y1, x0, x1 = (int(max(0, cy - margin)), int(cy + margin) + 1, int(max(0, cx - margin)), int(cx + margin) + 1)
        if np.abs(img[y0:y1, x0:x1].reshape(-1, 3).mean(0) - rgb).sum() >= MIN_CONTRAST:
            break
    draw_shape(img, shape, rgb, cx, cy, height, rng.uniform(0, 2 * math.pi))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return compress(img, rng)


def render_empty(rng: np.random.Generator, kind: str, size: int = 64, photos: Sequence[np.ndarray] = (),
                 oversample: int = 2, aspect: float = 1.0) -> np.ndarray:
    """A picture that holds no shape: a background of one of EMPTY_KINDS, drawn (in a frame of
    that `aspect`, squeezed) and damaged as `render` draws and damages a shape's."""
    w, h = canvas(size * oversample, aspect)
    img = cv2.resize(background(rng, w, h, photos, kind), (size, size), interpolation=cv2.INTER_AREA)
    return compress(img, rng)


def render_set(n: int, seed: int, size: int = 64, photos: Sequence[np.ndarray] = (),
               empty_share: float = 0.0, squeeze_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n pictures (uint8, n x size x size x 3) with their caption numbers. Without `empty_share`
    every picture shows a shape and its number indexes CAPTIONS (the pictures a seed gives are
    those it always gave); with it, about that share hold no shape, of a kind drawn evenly from
    EMPTY_KINDS ("photo" only with photos), numbered len(CAPTIONS) + its index in EMPTY_KINDS, so
    that every number indexes ALL_CAPTIONS. With `squeeze_share`, about that share are drawn in
    a wide or tall frame (width / height from 0.45 to 2.5) and squeezed to a square."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CAPTIONS), n)
    if empty_share > 0:
        kinds = [k for k in range(len(EMPTY_KINDS)) if photos or EMPTY_KINDS[k] != "photo"]
        empty = rng.random(n) < empty_share
        labels[empty] = len(CAPTIONS) + rng.choice(kinds, int(empty.sum()))
    aspects = np.ones(n)
    if squeeze_share > 0:
        squeezed = rng.random(n) < squeeze_share
        aspects[squeezed] = np.exp(rng.uniform(math.log(0.45), math.log(2.5), int(squeezed.sum())))
    for i, label in enumerate(labels):
        if label >= len(CAPTIONS):
            images[i] = render_empty(rng, EMPTY_KINDS[label - len(CAPTIONS)], size, photos, aspect=float(aspects[i]))
            continue
        colour, shape = CAPTIONS[label].split()[1:]
        images[i] = render(rng, shape, colour, size, photos, aspect=float(aspects[i]))
    return images, labels
