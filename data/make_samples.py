"""Makes the quick start's sample clips (drawn by this script, free to redistribute) and,
for machines without a model hub, a small open_clip model with seeded random weights.

    python data/make_samples.py data/samples            # sample clips
    python data/make_samples.py --tiny-model DIR        # tiny model: DIR/TinyCLIP.json, DIR/tiny.pt

The tests import `write_clip` and `write_tiny_model` from here.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

Painter = Callable[[int, int, int], np.ndarray]  # (frame number in segment, width, height) -> RGB

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_model(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A small CLIP (open_clip code, seeded random weights) as config JSON + checkpoint file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "TinyCLIP.json"
    ckpt = out_dir / "tiny.pt"
    if config.is_file() and ckpt.is_file():
        return config, ckpt
    config.write_text(json.dumps(TINY_CONFIG, indent=2))
    return save_seeded_model(config, ckpt, seed)


def save_seeded_model(config: Path, ckpt: Path, seed: int, **create: object) -> tuple[Path, Path]:
    """Builds the open_clip model of `config` (named after the file) with seeded random weights
    and saves its state dict to `ckpt`, atomically; `create` goes to open_clip.create_model."""
    import open_clip
    import torch

    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # "initialized randomly" is the point here
    try:
        model = open_clip.create_model(config.stem, pretrained=None, **create)
    finally:
        logging.disable(logging.NOTSET)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    return config, ckpt


def write_clip(path: Path, segments: Sequence[tuple[Painter, int]], fps: int = 25,
               size: tuple[int, int] = (320, 240), codec: str = "libx264") -> list[int]:
    """Encodes segments (painter, frame count) back to back; returns the cut frames."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cuts, n = [], 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20", "g": str(2 * fps)}
        for seg_no, (paint, count) in enumerate(segments):
            if seg_no:
                cuts.append(n)
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(paint(i, w, h)), format="rgb24")
                frame.pts = n
                container.mux(stream.encode(frame))
                n += 1
        container.mux(stream.encode(None))
    return cuts


def _canvas(w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return img


def circle(colour: tuple[int, int, int], background: tuple[int, int, int]) -> Painter:
    import cv2

    def paint(i: int, w: int, h: int) -> np.ndarray:
        img = _canvas(w, h, background)
        cv2.circle(img, (w // 4 + (i * 2) % (w // 2), h // 2), h // 4, colour, -1, cv2.LINE_AA)
        return img

    return paint


def text(words: str, colour: tuple[int, int, int], background: tuple[int, int, int]) -> Painter:
    import cv2

    def paint(i: int, w: int, h: int) -> np.ndarray:
        img = _canvas(w, h, background)
        cv2.putText(img, words, (10 + i % 20, h // 2), cv2.FONT_HERSHEY_SIMPLEX, w / 320, colour, 2, cv2.LINE_AA)
        return img

    return paint


def stripes(colour_a: tuple[int, int, int], colour_b: tuple[int, int, int], period: int = 24) -> Painter:
    def paint(i: int, w: int, h: int) -> np.ndarray:
        x = (np.arange(w) + i * 2) // (period // 2) % 2
        img = np.where(x[None, :, None] == 0, np.array(colour_a, np.uint8), np.array(colour_b, np.uint8))
        return np.broadcast_to(img, (h, w, 3)).astype(np.uint8)

    return paint


def sky(i: int, w: int, h: int) -> np.ndarray:
    import cv2

    ramp = np.linspace(0, 1, h)[:, None, None]
    img = ((1 - ramp) * np.array([70, 130, 230]) + ramp * np.array([180, 215, 255])).astype(np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)))
    cv2.circle(img, (w - 60 - i % 30, 50), 28, (255, 220, 40), -1, cv2.LINE_AA)
    cv2.rectangle(img, (0, h - h // 4), (w, h), (60, 160, 60), -1)
    return img


SAMPLES: dict[str, list[tuple[Painter, int]]] = {
    "shapes.mp4": [(circle((220, 30, 30), (250, 250, 250)), 50), (circle((30, 60, 220), (250, 250, 120)), 50),
                   (stripes((0, 0, 0), (255, 255, 255)), 50)],
    "outdoors.mp4": [(sky, 75), (stripes((40, 140, 40), (90, 200, 90), 8), 50)],
    "titles.mp4": [(text("HELLO WORLD", (255, 255, 255), (0, 0, 0)), 50), (text("THE END", (0, 0, 0), (255, 255, 255)), 50)],
}


def shape_world(events: Sequence[tuple[str, str, float, float, float, float]], seed: int) -> Painter:
    """One shot over a drifting drawn background in which toy-world shapes come and go:
    events are (shape, colour, start s, end s, x, y), x and y as fractions of the frame."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import toy_world

    rng = np.random.default_rng(seed)
    base = toy_world.background(rng, 480, 300)
    colours = {(s, c): toy_world.jittered(c, rng) for s, c, *_ in events}
    angles = {(s, c): float(rng.uniform(0, 6.283)) for s, c, *_ in events}

    def paint(i: int, w: int, h: int) -> np.ndarray:
        t = i / 25
        dx = int(20 + 20 * np.sin(t / 4))  # a slow pan over the background
        img = np.ascontiguousarray(base[20:20 + h, dx:dx + w]) if base.shape[0] >= h + 20 else _canvas(w, h, (90, 90, 90))
        for shape, colour, start, end, x, y in events:
            if start <= t < end:
                toy_world.draw_shape(img, shape, colours[shape, colour], x * w, y * h, 0.4 * h, angles[shape, colour])
        return img

    return paint


# Clips for the toy CLIP of data/toy-clip (it knows 16 captions such as "a yellow star"): one
# 16 s shot each; the demo's text search finds the moment a shape is on screen.
SHAPE_SAMPLES: dict[str, list[tuple[Painter, int]]] = {
    "garden-shapes.mp4": [(shape_world([("circle", "red", 1.0, 4.0, 0.5, 0.5), ("star", "yellow", 9.0, 12.0, 0.45, 0.5)], 1), 400)],
    "parade.mp4": [(shape_world([("square", "blue", 2.0, 5.0, 0.5, 0.5), ("triangle", "green", 8.0, 11.0, 0.55, 0.45)], 2), 400)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("data/samples"))
    parser.add_argument("--tiny-model", type=Path, help="write the offline tiny model into this folder instead")
    args = parser.parse_args()
    if args.tiny_model:
        config, ckpt = write_tiny_model(args.tiny_model)
        print(f"{config}\n{ckpt}")
        return
    for name, segments in {**SAMPLES, **SHAPE_SAMPLES}.items():
        target = args.out / name
        if not target.exists():
            write_clip(target, segments)
        print(target)


if __name__ == "__main__":
    main()
