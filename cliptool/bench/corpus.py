"""The bench corpus: looped, scaled H.264 files built from ../shared/testdata, and a ViT-B-32
checkpoint with seeded random weights (both cached under the bench's output folder)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "testdata"
SOURCES = [  # looped in this order; each clip is played in full, so its own cuts are kept
    "scenes/testvideo.mp4",
    "content/cockatoo.mp4",
    "scenes/goldeneye-vfr-drop3.mp4",
    "content/movie-hello.mp4",
]
FPS = 30


def _source_frames(width: int, height: int):
    """Frames of the source clips, scaled to width x height yuv420p, looping forever."""
    import av

    paths = [SHARED / s for s in SOURCES if (SHARED / s).is_file()]
    if not paths:
        raise SystemExit(f"bench: no source clips under {SHARED}")
    while True:
        for p in paths:
            with av.open(str(p)) as c:
                for frame in c.decode(video=0):
                    yield frame.reformat(width=width, height=height, format="yuv420p")


def build_clip(path: Path, width: int, height: int, seconds: float, crf: int = 23) -> Path:
    """A looped, scaled H.264 file (cached: built only when missing)."""
    import av

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    n = int(round(seconds * FPS))
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, FPS)
        for i, frame in zip(range(n), _source_frames(width, height)):
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def build_corpus(out: Path, quick: bool) -> dict[str, Path]:
    seconds = 40 if quick else 180
    corpus = out / "corpus"
    return {
        "720p": build_clip(corpus / f"loop-720p-{seconds}s.mp4", 1280, 720, seconds),
        "1080p": build_clip(corpus / f"loop-1080p-{seconds}s.mp4", 1920, 1080, seconds),
    }


def build_checkpoint(out: Path) -> Path:
    """ViT-B-32 with seeded random weights (no model hub here): real size, real speed."""
    ckpt = out / "vitb32-random.pt"
    if not ckpt.is_file():
        code = (
            "import open_clip, torch, sys; torch.manual_seed(0); "
            "m = open_clip.create_model('ViT-B-32', pretrained=None); "
            "torch.save(m.state_dict(), sys.argv[1])"
        )
        tmp = ckpt.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", code, str(tmp)], check=True)
        tmp.replace(ckpt)
    return ckpt
