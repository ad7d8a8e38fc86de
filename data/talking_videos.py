"""Short videos with speech and on-screen words at known times, for the speech and screen-text
engines (tests/test_speech.py, tests/test_screen_text.py, cliptool/bench/words_engines.py).

    python data/talking_videos.py OUT_DIR      # writes a few clips and their truth.json

Speech is synthesised with Festival (`text2wave`): the sentences to find in the US English HTS
voice (festvox-us-slt-hts), other speech in the diphone voice (festvox-kallpc16k) where it is
installed, else in the HTS voice too; placed at known times over low noise, or music. Words
are drawn into frames (DejaVu through PIL where installed, else OpenCV's Hershey fonts) at known
times and places. Video and audio are muxed with PyAV (H.264 + AAC, 48 kHz stereo, so a reader
has to resample).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

RATE = 16_000  # synthesis and mixing rate
WIDTH, HEIGHT, FPS = 320, 240, 10
TARGET_VOICE = "cmu_us_slt_arctic_hts"
OTHER_VOICE = "kal_diphone"
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/TTF"))

# 32 plain sentences (the bench says each once); the first few are the tests'.
SENTENCES = [
    "the weather is very nice today",
    "please open the window in the kitchen",
    "my brother bought a new car yesterday",
    "we will have dinner at seven o'clock",
    "the children are playing in the garden",
    "she reads a book every night",
    "the train leaves the station at noon",
    "i would like a cup of coffee",
    "the meeting has been moved to monday",
    "he forgot his keys at the office",
    "the music was too loud last night",
    "we need to buy more bread and milk",
    "the dog is sleeping under the table",
    "they moved to a house near the river",
    "the doctor will see you in ten minutes",
    "it is going to rain this afternoon",
    "can you tell me the way to the museum",
    "the price of oil went up again",
    "our team won the game on saturday",
    "the computer needs a new battery",
    "please turn off the lights when you leave",
    "the students passed the final exam",
    "my phone number has changed",
    "the hotel room was small but clean",
    "we watched a movie about the ocean",
    "the bank is closed on sunday",
    "he plays the piano very well",
    "the letter arrived this morning",
    "the company hired five new people",
    "i left my umbrella on the bus",
    "the garden is full of flowers",
    "the president will speak tonight",
]
OTHER_SENTENCES = [
    "one two three four five six",
    "this is another voice talking in the background",
    "nothing to see here move along",
    "good morning everybody and welcome",
]
STOPWORDS = {"the", "a", "an", "is", "are", "to", "at", "in", "on", "of", "and", "i", "we", "he", "she", "it", "my",
             "me", "you", "was", "has", "will", "be", "this", "his", "our", "they", "when", "but", "can", "very", "more",
             "been", "have", "would", "like", "every", "about", "under", "near", "off", "again", "up", "full"}
# Words for the screen: common ones a dictionary holds, several lengths.
SCREEN_WORDS = [
    "HELLO", "World", "Station", "coffee", "MUSEUM", "Garden", "river", "Battery", "KITCHEN", "Window",
    "Monday", "OCEAN", "piano", "Letter", "BREAD", "Flowers", "Tonight", "Camera", "SUMMER", "Bridge",
    "market", "Winter", "SPEED", "Sunday", "Doctor", "Planet", "FOREST", "Silver", "orange", "Castle",
    "NUMBER", "Travel",
]


def key_words(sentence: str) -> list[str]:
    """The words of a sentence a transcript must hold for it to count as found (no stopwords)."""
    return [w for w in sentence.lower().replace("'", " ").split() if w not in STOPWORDS and len(w) > 2]


def festival_available() -> bool:
    """Whether `text2wave` and the target HTS voice are installed."""
    return shutil.which("text2wave") is not None and any(
        p.is_dir() for p in Path("/usr/share/festival/voices").glob(f"*/{TARGET_VOICE}"))


def _voice_installed(voice: str) -> bool:
    return any(p.is_dir() for p in Path("/usr/share/festival/voices").glob(f"*/{voice}"))


def say(text: str, voice: str = TARGET_VOICE, cache: Path | None = None) -> np.ndarray:
    """`text` spoken by a Festival voice: float32 mono samples at 16 kHz (cached by text and voice)."""
    if not _voice_installed(voice):
        voice = TARGET_VOICE
    key = hashlib.sha1(f"{voice}\n{text}".encode()).hexdigest()[:16]
    cached = cache / f"say-{key}.npy" if cache else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(text + "\n")
        subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-F", str(RATE), str(txt), "-o", str(wav)],
                       check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            assert w.getframerate() == RATE and w.getsampwidth() == 2, "text2wave: unexpected format"
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
    samples = (pcm.mean(axis=1) / 32768.0).astype(np.float32)
    samples *= 0.5 / max(1e-6, float(np.abs(samples).max()))  # the same loudness for every voice
    if cached is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cached, samples)
    return samples


def noise(seconds: float, level: float = 0.003, seed: int = 0) -> np.ndarray:
    """Low broadband noise (a quiet room; about 28 dB under the voices): Gaussian, slightly low-passed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    x = rng.normal(0, 1, n + 1).astype(np.float32)
    return (level * (x[1:] + x[:-1]) / 2).astype(np.float32)


def music(seconds: float, level: float = 0.2, seed: int = 0) -> np.ndarray:
    """A little synthesised music: a chord pad and a plucked melody of harmonic notes."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    out = np.zeros(n, np.float32)
    scale = [261.6, 293.7, 329.6, 392.0, 440.0, 523.3, 587.3, 659.3]
    for chord_start in np.arange(0, seconds, 2.0):  # pad: a triad every 2 s
        a, b = int(chord_start * RATE), min(n, int((chord_start + 2.0) * RATE))
        root = scale[rng.integers(0, 4)] / 2
        for f in (root, root * 1.26, root * 1.5):
            out[a:b] += 0.15 * np.sin(2 * np.pi * f * t[a:b])
    for note_start in np.arange(0, seconds, 0.25):  # melody: a plucked note every 250 ms
        a = int(note_start * RATE)
        b = min(n, a + int(0.5 * RATE))
        f = scale[rng.integers(0, len(scale))]
        tt = t[a:b] - t[a]
        env = np.exp(-tt * 6)
        out[a:b] += 0.3 * env * sum(np.sin(2 * np.pi * f * k * tt) / k for k in (1, 2, 3))
    return (level * out / max(1e-6, float(np.abs(out).max()))).astype(np.float32)


@dataclass
class Said:
    """A sentence spoken in a clip, from `start` to `end` (s)."""

    text: str
    start: float
    end: float
    target: bool = True  # False: other speech around it (another voice, not to be searched)


@dataclass
class Shown:
    """A word drawn on the frames from `start` to `end` (s), its box as fractions of the frame."""

    text: str
    start: float
    end: float
    box: tuple[float, float, float, float]
    height_px: int


@dataclass
class Clip:
    path: Path
    seconds: float
    said: list[Said] = field(default_factory=list)
    shown: list[Shown] = field(default_factory=list)


def mix_speech(seconds: float, said: Sequence[tuple[str, float, bool]], background: np.ndarray | None,
               cache: Path | None) -> tuple[np.ndarray, list[Said]]:
    """Sentences (text, start, is_target) laid over `background`; returns the mix and the truth."""
    n = int(seconds * RATE)
    mix = np.zeros(n, np.float32) if background is None else background[:n].copy()
    truth = []
    for text, start, target in said:
        voice = TARGET_VOICE if target else OTHER_VOICE
        s = say(text, voice, cache) * (1.0 if target else 0.6)
        a = int(start * RATE)
        s = s[: max(0, n - a)]
        mix[a:a + len(s)] += s
        nz = np.flatnonzero(np.abs(s) > 0.02)  # the voiced part, without the synthesiser's silence
        t0 = start + (nz[0] / RATE if len(nz) else 0.0)
        t1 = start + (nz[-1] / RATE if len(nz) else len(s) / RATE)
        truth.append(Said(text, round(t0, 3), round(t1, 3), target))
    return np.clip(mix, -1, 1), truth


def _font(size_px: int, which: int) -> object | None:
    """A DejaVu TrueType font through PIL, or None (then OpenCV's Hershey fonts are used)."""
    try:
        from PIL import ImageFont
    except ImportError:
        return None
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
    for d in FONT_DIRS:
        p = d / names[which % len(names)]
        if p.is_file():
            return ImageFont.truetype(str(p), size_px)
    return None


def text_width(text: str, height_px: int, which: int = 0) -> int:
    """How wide `text` comes out of `draw_word`, in pixels."""
    font = _font(int(height_px * 1.4), which)
    if font is not None:
        x0, _, x1, _ = font.getbbox(text)  # type: ignore[attr-defined]
        return int(x1 - x0) + 2
    return int(len(text) * height_px * 1.1)


def draw_word(frame: np.ndarray, text: str, x: int, y: int, height_px: int, which: int = 0,
              colour: tuple[int, int, int] = (255, 255, 255)) -> tuple[int, int, int, int]:
    """Draws `text` on an RGB frame with its top-left near (x, y), capitals `height_px` high;
    returns the ink's box (x, y, w, h) in pixels."""
    before = frame.astype(np.int16)
    font = _font(int(height_px * 1.4), which)  # a font's cap height is about 0.72 of its size
    if font is not None:
        from PIL import Image, ImageDraw

        img = Image.fromarray(frame)
        ImageDraw.Draw(img).text((x, y), text, font=font, fill=colour)
        frame[:] = np.asarray(img)
    else:
        faces = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX]
        face = faces[which % len(faces)]
        scale = height_px / 22.0
        thick = max(2, height_px // 12)
        cv2.putText(frame, text, (x, y + height_px), face, scale, colour, thick, cv2.LINE_AA)
    ink = np.argwhere(np.abs(frame.astype(np.int16) - before).max(axis=2) > 60)
    if len(ink) == 0:
        return (x, y, 0, 0)
    (y0, x0), (y1, x1) = ink.min(axis=0), ink.max(axis=0)
    return (int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1))


def background(i: int, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A plain picture without text: a dark gradient with a soft disc that moves with `i`."""
    base = _gradient(width, height)
    img = base.copy()
    cx = int(width * (0.2 + 0.6 * ((i * 3 + seed * 37) % 100) / 100))
    cv2.circle(img, (cx, height // 2), height // 5, (90, 60, 40), -1, cv2.LINE_AA)
    return img


_GRADIENTS: dict[tuple[int, int], np.ndarray] = {}


def _gradient(width: int, height: int) -> np.ndarray:
    if (width, height) not in _GRADIENTS:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        img = np.stack([40 + 30 * xx / width, 50 + 20 * yy / height, 70 + 10 * np.sin(xx / 40.0)], axis=2)
        _GRADIENTS[(width, height)] = np.clip(img, 0, 255).astype(np.uint8)
    return _GRADIENTS[(width, height)]


def render_frames(seconds: float, shown: Sequence[tuple[str, float, float, int, int, int, int]],
                  width: int = WIDTH, height: int = HEIGHT, fps: int = FPS, seed: int = 0):
    """Yields (time, RGB frame) with words (text, start, end, x, y, height_px, font) drawn while
    they are on; and the truth as a list of Shown, filled as words are drawn."""
    truth: dict[int, Shown] = {}
    for i in range(int(round(seconds * fps))):
        t = i / fps
        frame = background(i, width, height, seed)
        for k, (text, start, end, x, y, h, which) in enumerate(shown):
            if start <= t < end:
                bx, by, bw, bh = draw_word(frame, text, x, y, h, which)
                truth.setdefault(k, Shown(text, start, end, (bx / width, by / height, bw / width, bh / height), h))
        yield t, frame, truth


def write_clip(path: Path, seconds: float, audio: np.ndarray | None,
               shown: Sequence[tuple[str, float, float, int, int, int, int]] = (),
               width: int = WIDTH, height: int = HEIGHT, fps: int = FPS, seed: int = 0) -> list[Shown]:
    """An H.264 video of `seconds` (words drawn as in `render_frames`) with `audio` (16 kHz mono
    float, or None for no audio track) as 48 kHz stereo AAC; returns the words' truth."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    truth: dict[int, Shown] = {}
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"crf": "20", "preset": "veryfast"}
        vs.codec_context.time_base = Fraction(1, fps)
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=48000, layout="stereo")
        for i, (_t, rgb, truth) in enumerate(render_frames(seconds, shown, width, height, fps, seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
            step = RATE  # one second at a time
            for a in range(0, len(audio), step):
                chunk = np.ascontiguousarray(audio[a:a + step].reshape(1, -1), dtype=np.float32)
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate = RATE
                af.pts = a
                af.time_base = Fraction(1, RATE)
                for rf in resampler.resample(af):
                    for packet in aus.encode(rf):
                        out.mux(packet)
            for rf in resampler.resample(None):
                for packet in aus.encode(rf):
                    out.mux(packet)
            for packet in aus.encode(None):
                out.mux(packet)
    return list(truth.values())


def talking_clip(path: Path, sentences: Sequence[str], cache: Path | None = None, gap: float = 2.0,
                 lead: float = 1.5, others: bool = True, seed: int = 0, dense: bool = False,
                 width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> Clip:
    """A clip in which each of `sentences` is said once (target voice), with another voice's
    sentence between every two of them (when `others`) and low noise throughout; `dense` leaves
    almost no pause (speech-heavy video)."""
    plan: list[tuple[str, float, bool]] = []
    t = lead
    for k, s in enumerate(sentences):
        plan.append((s, t, True))
        t += len(say(s, TARGET_VOICE, cache)) / RATE + (0.3 if dense else gap)
        if others:
            o = OTHER_SENTENCES[(k + seed) % len(OTHER_SENTENCES)]
            plan.append((o, t, False))
            t += len(say(o, OTHER_VOICE, cache)) / RATE + (0.3 if dense else gap)
    seconds = t + (0.5 if dense else lead)
    audio, said = mix_speech(seconds, plan, noise(seconds, seed=seed), cache)
    write_clip(path, seconds, audio, width=width, height=height, fps=fps, seed=seed)
    return Clip(path, seconds, said)


def word_clip(path: Path, words: Sequence[str], seconds_each: float = 1.0, seed: int = 0,
              width: int = 640, height: int = 360) -> Clip:
    """A silent clip showing each word in turn at a place, size (24-60 px capitals) and font
    of its own, with a blank second between words."""
    rng = np.random.default_rng(seed)
    shown = []
    t = 0.5
    for k, w in enumerate(words):
        h = int(rng.integers(24, 61))
        est_w = text_width(w, h, k)
        x = int(rng.integers(8, max(9, width - est_w - 8)))
        y = int(rng.integers(8, max(9, height - int(h * 1.8) - 8)))
        shown.append((w, t, t + seconds_each, x, y, h, k))
        t += seconds_each * 2
    seconds = t + 0.5
    truth = write_clip(path, seconds, None, shown, width, height, fps=4, seed=seed)
    return Clip(path, seconds, [], truth)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "speech-cache"
    clips = [talking_clip(out / "talking-0.mp4", SENTENCES[:3], cache),
             word_clip(out / "words-0.mp4", SCREEN_WORDS[:6])]
    music_audio = music(8.0)
    write_clip(out / "music.mp4", 8.0, music_audio)
    (out / "truth.json").write_text(json.dumps([{**asdict(c), "path": str(c.path)} for c in clips], indent=1))
    print(f"wrote {len(clips) + 1} clips to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("talking-videos"))
