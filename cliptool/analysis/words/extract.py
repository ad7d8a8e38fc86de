"""A video's words for an index run: which sources the settings ask for (`--words`), what the
words were made from (`words_key`: a change re-does only the words), and reading them.

Subtitles are read here (subtitles.py). Speech and on-screen text come from the engines in
speech.py and screen.py, imported only when asked for; a missing engine is a one-line error
before any work (`check_engines`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cliptool.analysis.words.base import Word
from cliptool.config import IndexOptions
from cliptool.errors import ModelUnavailableError, UsageError

WORD_SOURCES = ("subtitles", "speech", "screen")  # --words, in this order
SPEECH_ENGINES = ("pocketsphinx", "whisper")
SCREEN_MERGE_GAP = 1.5  # s: a screen word seen again within this of its last sighting continues its span
SCREEN_STEP = 1.0  # s: screen text is read at the scenes' samples and at least this often (a title held 1 s is seen)
SCREEN_PASS_STEP = 0.5  # s: read this often from the frames the picture pass decodes (no samples known there)

Reporter = Callable[[str], None]


def parse_words_option(value: str) -> str:
    """`--words` as recorded: "subtitles,speech,screen" in that order, "all", or "none" (""),
    UsageError for anything else."""
    text = value.strip().lower()
    if text == "all":
        return ",".join(WORD_SOURCES)
    if text in ("none", ""):
        return ""
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in WORD_SOURCES]
    if unknown:
        raise UsageError(f"--words: unknown source {unknown[0]!r} (choose from {', '.join(WORD_SOURCES)}, all, none)")
    return ",".join(s for s in WORD_SOURCES if s in chosen)


def sources_of(options: IndexOptions) -> tuple[str, ...]:
    return tuple(s for s in options.words.split(",") if s)


def words_key(video: Path, options: IndexOptions, names: Iterable[str] | None = None) -> str:
    """What a video's words are made from: the word settings that matter for its sources and its
    sidecar subtitle files ([name, size, mtime]). Its container's own tracks change only with
    the file, which the picture side notices."""
    from cliptool.analysis.words.subtitles import sidecar_fingerprint

    sources = sources_of(options)
    key: dict[str, Any] = {"words": list(sources)}
    if "speech" in sources:
        key.update(speech_engine=options.speech_engine, speech_model=options.speech_model, language=options.language)
    if "screen" in sources:
        key.update(screen_language=options.language, screen_step=SCREEN_PASS_STEP)
    if "subtitles" in sources:
        key["sidecars"] = sidecar_fingerprint(video, names)
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def check_engines(options: IndexOptions) -> None:
    """A one-line error when a source asked for has no engine here (before any work): UsageError
    for an unknown engine, ModelUnavailableError (exit 6) for one that is not installed."""
    sources = sources_of(options)
    if "speech" in sources:
        if options.speech_engine not in SPEECH_ENGINES:
            raise UsageError(f"--speech-engine: unknown engine {options.speech_engine!r} "
                             f"(choose from {', '.join(SPEECH_ENGINES)})")
        _engine("speech", "transcribe")
        _engine("speech", "check_speech")(options.speech_engine, options.speech_model, options.language)
    if "screen" in sources:
        _engine("screen", "read_screen_text")
        _engine("screen", "check_screen")(ocr_languages(options.language) if options.language else "eng")


def _engine(module: str, name: str) -> Callable[..., Any]:
    import importlib

    try:
        found = getattr(importlib.import_module(f"cliptool.analysis.words.{module}"), name)
    except (ImportError, AttributeError) as exc:
        what = "speech recognition" if module == "speech" else "on-screen text reading"
        raise ModelUnavailableError(f"--words {'speech' if module == 'speech' else 'screen'}: {what} is not "
                                    f"available in this install ({type(exc).__name__}: {exc})") from None
    return found


def read_words(video: Path, options: IndexOptions, sample_times: Sequence[float] = (),
               report: Reporter | None = None, names: Iterable[str] | None = None,
               duration: float | None = None, progress: Callable[[], None] | None = None,
               screen: ScreenTap | None = None) -> list[Word]:
    """Every word of a video from the sources `options.words` names, by start time.
    screen: the tap that read the screen text from the picture pass's frames; without it,
    the video is decoded again and read at sample_times (the scenes' samples) and every
    SCREEN_PASS_STEP s up to `duration` (`screen_times`), the grid `words_key` records. progress: called as speech is recognised
    and frames are read (an index run's watchdog: no decoded frame comes while words are read)."""
    sources = sources_of(options)
    words: list[Word] = []
    if "subtitles" in sources:
        from cliptool.analysis.words.subtitles import read_subtitles

        words += read_subtitles(video, report, names)
    if "speech" in sources:
        transcribe = _engine("speech", "transcribe")
        words += transcribe(video, engine=options.speech_engine, model=options.speech_model, language=options.language,
                            progress=progress)
    if screen is not None:
        words += screen.finish()
        return sorted(words, key=lambda w: (w.start, w.end, w.source))
    times = screen_times(sample_times, duration, SCREEN_PASS_STEP) if "screen" in sources else []  # the grid words_key records
    if times:
        read_screen_text = _engine("screen", "read_screen_text")
        frames = frames_at(video, times)
        if progress is not None:
            frames = _telling(frames, progress)
        seen = read_screen_text(frames, **({"languages": ocr_languages(options.language)} if options.language else {}))
        words += merge_screen_words(seen, times)
    return sorted(words, key=lambda w: (w.start, w.end, w.source))


class ScreenTap:
    """Reads the text on screen from the frames a picture pass decodes anyway (`offer` each one,
    in order), every SCREEN_PASS_STEP s, on a thread beside the pass (the detector and tesseract
    release the GIL), so a video is decoded once for both. A bounded queue holds a few frames:
    a pass that outruns the reading waits for it."""

    def __init__(self, options: IndexOptions, step: float = SCREEN_PASS_STEP,
                 progress: Callable[[], None] | None = None) -> None:
        import queue
        import threading

        self._read = _engine("screen", "read_screen_text")
        self._languages = {"languages": ocr_languages(options.language)} if options.language else {}
        self._step = step
        self._progress = progress  # told while the pass waits for the reader (an index run's watchdog)
        self._next = step / 2
        self._times: list[float] = []
        self._queue: queue.Queue[tuple[float, Any] | None] = queue.Queue(maxsize=4)
        self._words: list[Word] = []
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliptool-screen-text", daemon=True)
        self._thread.start()

    def offer(self, frame: Any) -> None:
        """A decoded frame (media.decode.Frame), in presentation order: read when its time is due."""
        if frame.time < self._next or self._stopped.is_set():
            return
        from cliptool.media.decode import to_rgb

        t = round(self._next, 3)
        self._next = (int(frame.time / self._step - 0.5) + 1.5) * self._step  # the next grid time after this frame
        self._times.append(t)
        self._put((t, to_rgb(frame.av_frame)))

    def _put(self, item: tuple[float, Any] | None) -> None:
        import queue

        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._progress is not None:
                    self._progress()

    def _frames(self) -> Iterable[tuple[float, Any]]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            yield item

    def _run(self) -> None:
        try:
            self._words = self._read(self._frames(), **self._languages)
        except BaseException as exc:  # noqa: BLE001 - handed to finish(), on the caller's thread
            self._error = exc
        finally:
            self._stopped.set()

    def finish(self) -> list[Word]:
        """The words read, merged across frames (`merge_screen_words`), once the rest is read
        (progress told while waiting). The reader's error is raised here."""
        self._put(None)
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)
            if self._progress is not None:
                self._progress()
        if self._error is not None:
            raise self._error
        return merge_screen_words(self._words, self._times)

    def abort(self) -> None:
        """Stops reading (a failed pass): the thread ends after the frame in hand."""
        self._stopped.set()
        import queue

        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put_nowait(None)


def screen_times(sample_times: Sequence[float], duration: float | None = None,
                 step: float = SCREEN_STEP) -> list[float]:
    """The times screen text is read at: the scenes' samples and a grid of `step` s over the
    video (to `duration`, else to the last sample), so that a long scene's text that comes and
    goes between its few samples is seen too."""
    ends = [*sample_times, *([duration] if duration else [])]
    if not ends:
        return []
    last = max(ends)
    grid = [round(k * step + step / 2, 3) for k in range(int(last / step + 0.5))]
    return sorted({round(float(t), 3) for t in sample_times} | {t for t in grid if t < last})


# --language takes ISO 639-1 codes (as speech engines do); text recognition (Tesseract) names
# its language data with ISO 639-2 codes: the common ones mapped, others passed on as given
_OCR_LANGUAGES = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld",
                  "ru": "rus", "pl": "pol", "sv": "swe", "da": "dan", "fi": "fin", "no": "nor", "tr": "tur",
                  "ja": "jpn", "ko": "kor", "zh": "chi_sim", "ar": "ara", "hi": "hin", "el": "ell", "cs": "ces"}


def ocr_languages(language: str) -> str:
    """`--language` as text recognition names it: "en" -> "eng", "en+de" -> "eng+deu"."""
    return "+".join(_OCR_LANGUAGES.get(part.strip().lower().split("-")[0], part.strip())
                    for part in language.replace(",", "+").split("+") if part.strip())


def frames_at(video: Path, times: Sequence[float]) -> Iterable[tuple[float, Any]]:
    """(time, RGB frame) of the decoded frame nearest each of `times`, in one pass over the video."""
    from cliptool.media.decode import VideoReader, to_rgb

    wanted = sorted(set(float(t) for t in times))
    if not wanted:
        return
    i = 0
    with VideoReader(video) as reader:
        previous = None
        for frame in reader.frames():
            while i < len(wanted) and frame.time >= wanted[i]:
                pick = frame if previous is None or abs(frame.time - wanted[i]) <= abs(previous.time - wanted[i]) \
                    else previous
                yield wanted[i], to_rgb(pick.av_frame)
                i += 1
            if i >= len(wanted):
                return
            previous = frame
        if previous is not None:
            for t in wanted[i:]:
                yield t, to_rgb(previous.av_frame)


def merge_screen_words(words: Iterable[Word], times: Sequence[float] = ()) -> list[Word]:
    """Screen words read frame by frame, merged: the same text seen on consecutive frames (no
    frame between without it, and within SCREEN_MERGE_GAP s) is one word spanning them."""
    order = {t: i for i, t in enumerate(times)}
    by_text: dict[str, list[Word]] = {}
    for w in words:
        by_text.setdefault(" ".join(w.text.split()).casefold(), []).append(w)
    out: list[Word] = []
    for group in by_text.values():
        group.sort(key=lambda w: w.start)
        run = [group[0]]
        for w in group[1:]:
            last = run[-1]
            a, b = order.get(last.start), order.get(w.start)
            consecutive = (a is not None and b is not None and b - a <= 1) or (a is None or b is None)
            if consecutive and w.start - last.end <= SCREEN_MERGE_GAP:
                run.append(w)
            else:
                out.append(_span(run))
                run = [w]
        out.append(_span(run))
    return sorted(out, key=lambda w: (w.start, w.text))


def _telling(frames: Iterable[tuple[float, Any]], progress: Callable[[], None]) -> Iterable[tuple[float, Any]]:
    for item in frames:
        progress()
        yield item


def _span(run: list[Word]) -> Word:
    first = run[0]
    confidences = [w.confidence for w in run if w.confidence is not None]
    return Word(first.start, max(w.end for w in run), first.text, first.source, first.language, first.box,
                max(confidences) if confidences else None)


__all__ = ["SPEECH_ENGINES", "WORD_SOURCES", "ScreenTap", "check_engines", "frames_at", "merge_screen_words", "ocr_languages",
           "parse_words_option", "read_words", "screen_times", "sources_of", "words_key"]
