"""Videos of the toy world for moment recall: one 30 s shot of a slowly panning, noisy
background in which a shape (or two) appears once for a few seconds.

    python data/toy_videos.py OUT_DIR        # writes the recall corpus and its truth.json

Each video is a single shot (no cut): a background from `toy_world.background` (a real photo
crop, noise, a gradient or a flat colour), larger than the frame and panned slowly (a few
pixels a second), its colours muted (see `muted`), plus fresh sensor-like noise on every frame and H.264 compression. A shape of
25-45% of the frame height appears abruptly at `start` and stays, still, for `duration`
seconds; it is placed well inside the centre square, which is what the model sees (CLIP's
preprocessing crops the centre). The truth of each video is its list of appearances
(caption, start, end).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("toy_world", _HERE / "toy_world.py")
toy_world = sys.modules.setdefault("toy_world", importlib.util.module_from_spec(_spec))  # type: ignore[arg-type]
_spec.loader.exec_module(toy_world)  # type: ignore[union-attr]

WIDTH, HEIGHT, FPS = 320, 240, 25
SECONDS = 30.0
DURATIONS = (0.5, 1.0, 2.0, 4.0)


@dataclass
class Appearance:
    caption: str
    start: float
    end: float
    cx: float = 0.0
    cy: float = 0.0
    height: float = 0.0
    angle: float = 0.0
    rgb: tuple[int, int, int] = (0, 0, 0)


@dataclass
class ToyVideo:
    name: str
    seed: int
    appearances: list[Appearance] = field(default_factory=list)
    seconds: float = SECONDS


SATURATION = 0.35  # backgrounds keep this much of their colour saturation


def muted(rgb: np.ndarray, saturation: float = SATURATION) -> np.ndarray:
    """The background with its colours muted: the toy model was only ever shown pictures with a
    shape, and scores a strongly coloured empty background (a red saucer, a green noise field)
    as high as a real shape, which would measure the model, not what gets sampled."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= saturation
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _place(rng: np.random.Generator, bg: np.ndarray, offset: tuple[float, float], shape: str, colour: str,
           start: float, end: float) -> Appearance:
    """A shape inside the centre square, in a colour that stands out from what lies under it."""
    side = min(WIDTH, HEIGHT)
    x0, y0 = (WIDTH - side) / 2, (HEIGHT - side) / 2
    for _ in range(40):
        height = rng.uniform(0.25, 0.45) * HEIGHT
        margin = height * 0.6 + side * 0.06
        cx, cy = x0 + rng.uniform(margin, side - margin), y0 + rng.uniform(margin, side - margin)
        rgb = toy_world.jittered(colour, rng)
        ox, oy = offset
        y_lo, y_hi = int(max(0, cy + oy - height / 2)), int(cy + oy + height / 2) + 1
        x_lo, x_hi = int(max(0, cx + ox - height / 2)), int(cx + ox + height / 2) + 1
        under = bg[y_lo:y_hi, x_lo:x_hi].reshape(-1, 3).mean(0)
        if np.abs(under - rgb).sum() >= toy_world.MIN_CONTRAST * 1.5:
            break
    return Appearance(toy_world.caption(shape, colour), start, end, float(cx), float(cy), float(height),
                      float(rng.uniform(0, 2 * math.pi)), tuple(int(v) for v in rgb))  # type: ignore[arg-type]


def plan(name: str, seed: int, shows: list[tuple[str, float, float]], photos: list[np.ndarray],
         seconds: float = SECONDS) -> tuple[ToyVideo, np.ndarray, np.ndarray]:
    """The video's truth, its (large) background and its pan: (ToyVideo, background, pan px/s)."""
    rng = np.random.default_rng(seed)
    pan = rng.uniform(-1, 1, 2)
    pan = pan / max(1e-6, float(np.linalg.norm(pan))) * rng.uniform(2.0, 5.0)  # pixels a second
    pad = int(math.ceil(np.abs(pan).max() * seconds)) + 4
    bg = muted(toy_world.background(rng, WIDTH + 2 * pad, HEIGHT + 2 * pad, photos))
    video = ToyVideo(name, seed, seconds=seconds)
    for caption, start, end in shows:
        colour, shape = caption.split()[1:]
        mid = (start + end) / 2
        offset = (pad + pan[0] * (mid - seconds / 2), pad + pan[1] * (mid - seconds / 2))
        video.appearances.append(_place(rng, bg, offset, shape, colour, start, end))
    return video, bg, pan


def encode(path: Path, frames: Iterable[np.ndarray], width: int, height: int, crf: int = 23) -> None:
    """Encodes RGB frames (H.264, yuv420p, FPS frames a second), written beside and moved into place."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, FPS)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)


def write_video(path: Path, video: ToyVideo, bg: np.ndarray, pan: np.ndarray, crf: int = 23) -> None:
    """Renders and encodes one video (H.264, yuv420p, FPS frames a second)."""
    rng = np.random.default_rng(video.seed + 1)
    pad = (bg.shape[1] - WIDTH) // 2
    noise_sigma = float(rng.uniform(2.0, 5.0))
    n = int(round(video.seconds * FPS))
    bank = [rng.normal(0, noise_sigma, (HEIGHT, WIDTH, 3)).astype(np.float32) for _ in range(12)]

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            t = i / FPS
            dx, dy = pad + pan[0] * (t - video.seconds / 2), pad + pan[1] * (t - video.seconds / 2)
            m = np.float32([[1, 0, -dx], [0, 1, -dy]])
            img = cv2.warpAffine(bg, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for a in video.appearances:
                if a.start <= t < a.end:
                    shape = a.caption.split()[2]
                    toy_world.draw_shape(img, shape, a.rgb, a.cx, a.cy, a.height, a.angle)
            noise = bank[int(rng.integers(len(bank)))]  # fresh-looking noise on every frame, cheaply
            yield np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    encode(path, frames(), WIDTH, HEIGHT, crf)


def moment_set(duration: float, count: int, seed: int, two: bool = False, seconds: float = SECONDS,
               skip: int = 0) -> list[tuple[str, int, list[tuple[str, float, float]]]]:
    """`count` videos (name, seed, shows), no caption used twice in the set (so each query has
    one right video; `skip` leaves out the first captions, for sets that share an index). With
    `two`, each video shows two shapes of different captions, one in each half."""
    rng = np.random.default_rng(seed)
    captions = [toy_world.CAPTIONS[i] for i in rng.permutation(len(toy_world.CAPTIONS))]
    if skip:  # a fixed order, so that sets made with different seeds do not share captions
        captions = [toy_world.CAPTIONS[i] for i in np.random.default_rng(0).permutation(len(toy_world.CAPTIONS))][skip:]
    per = 2 if two else 1
    if count * per > len(captions):
        raise ValueError("at most 16 captions in one set")
    out = []
    half = seconds / 2
    for k in range(count):
        caps = captions[k * per:(k + 1) * per]
        if two:
            a = float(rng.uniform(2.0, half - 3.0 - duration))
            b = float(rng.uniform(half + 1.0, seconds - 2.0 - duration))
            shows = [(caps[0], a, a + duration), (caps[1], b, b + duration)]
        else:
            a = round(float(rng.uniform(2.0, seconds - 2.0 - duration)), 3)
            shows = [(caps[0], a, a + duration)]
        tag = f"two-{duration:g}s" if two else f"d{duration:g}s"
        out.append((f"{tag}-{k:02d}.mp4", seed * 1000 + k, shows))
    return out


def build_set(folder: Path, specs: list[tuple[str, int, list[tuple[str, float, float]]]],
              photos: list[np.ndarray] | None = None, seconds: float = SECONDS) -> list[ToyVideo]:
    """Writes the set's videos into `folder` (cached: a video whose truth matches is kept) and
    returns their truth."""
    photos = toy_world.load_photos() if photos is None else photos
    folder.mkdir(parents=True, exist_ok=True)
    truth_path = folder / "truth.json"
    try:
        old = {v["name"]: v for v in json.loads(truth_path.read_text())}
    except (OSError, ValueError):
        old = {}
    videos = []
    for name, seed, shows in specs:
        video, bg, pan = plan(name, seed, shows, photos, seconds)
        if not (folder / name).is_file() or old.get(name) != json.loads(json.dumps(asdict(video))):
            write_video(folder / name, video, bg, pan)
        videos.append(video)
    truth_path.write_text(json.dumps([asdict(v) for v in videos], indent=1))
    return videos


def recall_corpus(out: Path, per_duration: int = 8, two_count: int = 4, seed: int = 7) -> dict[str, list[ToyVideo]]:
    """The recall corpus: a set of `per_duration` single-shape videos for each duration, and a
    set of two-shape videos (1 s appearances); each set is its own index."""
    photos = toy_world.load_photos()
    sets = {}
    for i, d in enumerate(DURATIONS):
        sets[f"d{d:g}"] = build_set(out / f"d{d:g}", moment_set(d, per_duration, seed + i), photos)
    sets["two"] = build_set(out / "two", moment_set(1.0, two_count, seed + 100, two=True), photos)
    return sets


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("toy-videos")
    for key, vids in recall_corpus(target).items():
        print(key, len(vids), "videos")


# -- frames of any shape, a shape anywhere in them (what the image tower sees of a frame) ---------
FRAME_SHAPES = {"16:9": (640, 360), "21:9": (840, 360), "4:3": (480, 360), "1:1": (360, 360), "9:16": (360, 640)}
# where the shape's centre lies, as fractions of the frame's width and height: the outer fifths
# of the long side (left/top and right/bottom), a corner, and the centre
PLACES = {"centre": (0.5, 0.5), "side": (0.1, 0.5), "other side": (0.9, 0.5), "corner": (0.1, 0.1)}


def place_in(frame: str, place: str) -> tuple[float, float]:
    """(cx, cy) in pixels of a place in a frame shape; "side" is along the long side."""
    w, h = FRAME_SHAPES[frame]
    fx, fy = PLACES[place]
    if h > w and place in ("side", "other side"):
        fx, fy = fy, fx  # a tall frame's sides are its top and bottom
    return fx * w, fy * h


def write_framed(path: Path, frame: str, place: str, caption: str, start: float, end: float, seconds: float,
                 seed: int, photos: list[np.ndarray] | None = None) -> None:
    """A single shot of `seconds` in a frame of shape `frame` (FRAME_SHAPES), a muted still
    background with sensor noise, and a shape (`caption`) 29% of the frame's short side tall (it
    fits in an outer fifth) at `place` from `start` to `end`."""
    w, h = FRAME_SHAPES[frame]
    rng = np.random.default_rng(seed)
    photos = toy_world.load_photos() if photos is None else photos
    bg = muted(toy_world.background(rng, w, h, photos))
    colour, shape = caption.split()[1:]
    rgb = toy_world.jittered(colour, rng)
    cx, cy = place_in(frame, place)
    height, angle = 0.29 * min(w, h), float(rng.uniform(0, 2 * math.pi))

    def frames() -> Iterator[np.ndarray]:
        for i in range(int(round(seconds * FPS))):
            img = bg.copy()
            if start <= i / FPS < end:
                toy_world.draw_shape(img, shape, rgb, cx, cy, height, angle)
            yield np.clip(img.astype(np.float32) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)

    encode(path, frames(), w, h)
