"""Words seen on screen: a cheap text detector on each frame, and tesseract only on the frames
(and the part of each frame) where it finds something that looks like text.

The detector (OpenCV, about a millisecond a frame at 640 px wide) looks for lines of strokes:
the morphological gradient of the grey frame, thresholded, closed along rows so that the
letters of a word join, and kept where a blob is shaped like a line of text (wider than tall,
an ink share of a letter's, and many dark-light crossings along its middle row). A frame with
no such blob is skipped; tesseract (the program, TSV output) reads the rest, on the
region that holds the blobs only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from cliptool.analysis.words.base import Word
from cliptool.errors import ModelUnavailableError, one_line

DETECT_HEIGHT = 360  # frames are looked at this tall (or as they are, when smaller)
MIN_TEXT_PX = 10  # the least letter height the detector looks for, in pixels at DETECT_HEIGHT
MIN_CONFIDENCE = 0.6  # tesseract's word confidence (0..1) a word needs to be kept
_WORDLIKE = re.compile(r"\w.*\w", re.UNICODE)  # two letters or digits at least: lone marks are mostly misreadings
# ISO 639-2 (tesseract's names) to the ISO 639-1 codes the Word record holds, for the common ones
_ISO1 = {"eng": "en", "deu": "de", "fra": "fr", "spa": "es", "ita": "it", "por": "pt", "nld": "nl", "rus": "ru",
         "jpn": "ja", "chi_sim": "zh", "chi_tra": "zh", "kor": "ko", "ara": "ar", "pol": "pl", "swe": "sv",
         "tur": "tr", "ukr": "uk", "ces": "cs", "dan": "da", "fin": "fi", "nor": "no", "ell": "el", "hin": "hi"}


@dataclass(frozen=True)
class TextRegion:
    """A blob the detector takes for a line of text: x, y, w, h in the frame's pixels."""

    x: int
    y: int
    w: int
    h: int


def text_regions(rgb: np.ndarray) -> list[TextRegion]:
    """Where `rgb` (HxWx3 uint8) may hold text; [] when it likely holds none."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_HEIGHT / height)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, int(width * scale)), max(1, int(height * scale))),
                          interpolation=cv2.INTER_AREA)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    gradient = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, kernel)
    _, strokes = cv2.threshold(gradient, 48, 255, cv2.THRESH_BINARY)
    joined = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    found = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if h < MIN_TEXT_PX or h > grey.shape[0] * 0.6 or w < 0.8 * h:
            continue
        box = strokes[y:y + h, x:x + w]
        ink = float(np.count_nonzero(box)) / (w * h)
        if not 0.12 <= ink <= 0.85:
            continue
        # letters cross a row through their middle many times; a smooth edge or a blob does not
        rows = box[h // 3: h - h // 3 or h]
        crossings = np.count_nonzero(np.diff(rows.astype(np.int16), axis=1) > 0, axis=1)
        if float(np.median(crossings)) < 2 + w / (3.0 * h):
            continue
        if not _letters_in_a_row(box, labels[y:y + h, x:x + w] == i):
            continue
        found.append(TextRegion(int(x / scale), int(y / scale), int(np.ceil(w / scale)), int(np.ceil(h / scale))))
    return found


def _letters_in_a_row(strokes: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a blob's strokes (before closing) make two or more letters of about one height,
    standing on one line: what a word is made of and leaves, grass or a window grid rarely are."""
    import cv2

    part = np.where(mask, strokes, 0).astype(np.uint8)
    contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)  # outlines, not holes
    h = mask.shape[0]
    rects = np.array([cv2.boundingRect(c) for c in contours], np.float64).reshape(-1, 4)
    tall = rects[(rects[:, 3] >= 0.4 * h) & (rects[:, 2] * rects[:, 3] >= 12)]
    if len(tall) < 2:
        return False
    heights = tall[:, 3]
    bottoms = tall[:, 1] + tall[:, 3]
    return (float(heights.std() / heights.mean()) <= 0.3
            and float(np.median(np.abs(bottoms - np.median(bottoms)))) <= 0.15 * h
            and float(np.median(tall[:, 2])) <= 2.5 * float(np.median(heights)))  # two letters may touch


def read_screen_text(frames: Iterable[tuple[float, np.ndarray]], languages: str = "eng") -> list[Word]:
    """The words on screen in `frames` ((time in s, RGB uint8 HxWx3) pairs), each a Word at its
    frame's time (start = end = time) with its box (x, y, w, h as fractions of the frame) and
    tesseract's confidence; frames the detector finds no text in are not read. `languages`:
    tesseract's language names joined with "+" ("eng", "eng+deu"). Errors are one line."""
    reader: _Tesseract | None = None
    words: list[Word] = []
    last: tuple[list[TextRegion], np.ndarray, list[Word]] | None = None
    for t, rgb in frames:
        regions = text_regions(rgb)
        if not regions:
            last = None
            continue
        look = _thumbnail(rgb)
        if last is not None and _same_text(last[0], regions) and float(np.abs(last[1] - look).mean()) < 4.0:
            read = [replace(w, start=float(t), end=float(t)) for w in last[2]]  # the frame before, again
        else:
            if reader is None:
                reader = _Tesseract(languages)
            read = reader.read(float(t), rgb, regions)
        last = (regions, look, read)
        words.extend(read)
    return words


def check_screen(languages: str = "eng") -> None:
    """A one-line error (ModelUnavailableError) when `read_screen_text` could not run: no
    tesseract program, or no data for one of `languages`."""
    _Tesseract(languages)


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A 64x36 grey copy of a frame, to tell a repeat of the frame before from a change."""
    import cv2

    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)


def _same_text(a: list[TextRegion], b: list[TextRegion], tolerance: int = 3) -> bool:
    """Whether two frames' text regions are the same blobs (within a few pixels)."""
    return len(a) == len(b) and all(
        abs(p.x - q.x) <= tolerance and abs(p.y - q.y) <= tolerance and abs(p.w - q.w) <= tolerance
        and abs(p.h - q.h) <= tolerance for p, q in zip(a, b))


class _Tesseract:
    """The tesseract program, one call per frame (PNG in, TSV out) on the region that holds the
    detector's blobs; one thread (OMP_THREAD_LIMIT=1: faster on a busy machine, and indexing has
    other work for the other cores)."""

    def __init__(self, languages: str) -> None:
        exe = shutil.which("tesseract")
        if exe is None:
            raise ModelUnavailableError("reading on-screen text needs the tesseract program: install tesseract-ocr "
                                        "(apt install tesseract-ocr, brew install tesseract)")
        self.exe = exe
        self.env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        listed = self._run(["--list-langs"], b"").decode("utf-8", "replace").splitlines()
        have = {line.strip() for line in listed[1:] if line.strip()}  # the first line is a heading
        missing = [lang for lang in languages.split("+") if lang and lang not in have]
        if missing:
            raise ModelUnavailableError(f"tesseract has no data for {', '.join(missing)} (it has "
                                        f"{', '.join(sorted(have)) or 'none'}); install tesseract-ocr-{missing[0]}")
        self.languages = languages
        first = languages.split("+")[0]
        self.language = _ISO1.get(first, first if len(first) == 2 else "")

    def _run(self, args: list[str], stdin: bytes) -> bytes:
        try:
            proc = subprocess.run([self.exe, *args], input=stdin, capture_output=True, env=self.env, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelUnavailableError(f"tesseract failed: {one_line(exc)}") from None
        if proc.returncode != 0:
            raise ModelUnavailableError(f"tesseract failed: {one_line(ValueError(), proc.stderr.decode('utf-8', 'replace'))}")
        return proc.stdout

    def read(self, t: float, rgb: np.ndarray, regions: list[TextRegion]) -> list[Word]:
        """The words tesseract reads in the part of `rgb` around `regions`."""
        height, width = rgb.shape[:2]
        pad = max(r.h for r in regions)
        # the whole width of the rows that hold the blobs: widely spaced letters (a monospaced
        # font) are not joined into the blob, and a word's first letters were cut off by a
        # crop a few letter heights around it ("coffee" read "offee")
        x0, x1 = 0, width
        y0 = max(0, min(r.y for r in regions) - pad)
        y1 = min(height, max(r.y + r.h for r in regions) + pad)
        import cv2

        crop = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            return []
        tsv = self._run(["stdin", "stdout", "-l", self.languages, "--psm", "11", "tsv"], png.tobytes())
        out = []
        for row in tsv.decode("utf-8", "replace").splitlines()[1:]:
            cols = row.split("\t")
            if len(cols) < 12 or cols[0] != "5":  # level 5: a word
                continue
            left, top, w, h = (int(v) for v in cols[6:10])
            text = cols[11].strip()
            confidence = float(cols[10]) / 100.0
            if not text or confidence < MIN_CONFIDENCE or not _WORDLIKE.search(text):
                continue
            box = ((x0 + left) / width, (y0 + top) / height, w / width, h / height)
            out.append(Word(t, t, text, "screen", self.language, tuple(round(v, 4) for v in box),  # type: ignore[arg-type]
                            round(confidence, 3)))
        return out
