"""Analysing one file of an index run, the same in this process and on a Ray worker: the
per-file time limit (`Watchdog`), `analyse_file` and its `FileResult`."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cliptool.analysis.analyse import AnalysedVideo, ModelLoadError, analyse_video
from cliptool.config import IndexOptions
from cliptool.errors import VideoError, one_line
from cliptool.models.clip import ClipModel
from cliptool.models.common import file_fingerprint
from cliptool.store import IndexStore, VideoRecord, video_id_for

Reporter = Callable[[str], None]

DEFAULT_FILE_TIMEOUT = 120.0  # seconds without a decoded frame before a file is given up
HARD_TIMEOUT_GRACE = 30.0  # then this long for a decoder stuck in C before the run is ended
EXIT_HUNG = 9

class FileTimeoutError(Exception):
    """Raised in the main thread when the file being analysed made no progress for too long."""


# -- per-file time limit ---------------------------------------------------------------------------
class Watchdog:
    """Gives up on a file that makes no progress for `limit` seconds.

    Soft: SIGALRM to the main thread, whose handler raises FileTimeoutError as soon as the
    decoder returns to Python. Hard: a decoder stuck inside C never returns, so after a further
    grace period the file is remembered as failed and the process ends (the next run goes on
    without it).
    """

    def __init__(self, limit: float, index_dir: Path, report: Reporter) -> None:
        self.limit = limit
        self.index_dir = index_dir
        self.report = report
        self._lock = threading.RLock()
        self._token = 0
        self._path: Path | None = None
        self._stat: os.stat_result | None = None
        self._last = 0.0
        self._grace = 0.0  # s more an engine said one call may take (working)
        self._fired: int | None = None
        self._fired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def __enter__(self) -> Watchdog:
        if self.limit > 0 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            self._thread = threading.Thread(target=self._watch, name="cliptool-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)

    @contextmanager
    def file(self, path: Path, st: os.stat_result) -> Iterator[None]:
        """Times the work on one file (not its commit)."""
        with self._lock:
            self._token += 1
            self._path, self._stat, self._last, self._fired = path, st, time.monotonic(), None
            self._grace = 0.0
        try:
            yield
        finally:
            with self._lock:
                self._path = None
                self._token += 1

    def progress(self, _t: float = 0.0) -> None:
        self._last = time.monotonic()
        self._grace = 0.0

    def working(self, grace: float = 0.0) -> None:
        """Progress, from an engine about to spend up to `grace` s more in one call that cannot
        report (a recogniser on one utterance): the limit counts from after that."""
        self._last = time.monotonic()
        self._grace = max(0.0, grace)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        with self._lock:
            live = self._path is not None and self._fired == self._token
        if live:
            raise FileTimeoutError(f"no progress for {self.limit:g} s (--file-timeout)")

    def _watch(self) -> None:
        while not self._stop.wait(min(0.25, max(0.005, self.limit / 4))):
            with self._lock:
                if self._path is None:
                    continue
                now = time.monotonic()
                if self._fired is None and now - self._last > self.limit + self._grace:
                    self._fired, self._fired_at = self._token, now
                    send = True
                elif self._fired == self._token and now - self._fired_at > HARD_TIMEOUT_GRACE:
                    self._hung(self._path, self._stat)
                    return
                elif self._fired == self._token and now - self._fired_at > 1.0:
                    send = True  # the first signal may have landed where it could not act
                else:
                    send = False
            if send:
                try:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)
                except (OSError, ValueError):
                    pass

    def _hung(self, path: Path, st: os.stat_result | None) -> None:
        """Remembers the file as failed and ends the process (a Ray worker's watchdog only ends it)."""
        message = f"{path}: decoder hung for over {self.limit + HARD_TIMEOUT_GRACE:g} s"
        try:
            with IndexStore(self.index_dir, lock_timeout=5) as store:
                store.put_failure(video_id_for(path), str(path), st.st_size if st else -1,
                                  st.st_mtime if st else -1.0, message)
            tail = "; it is marked as failed: run `cliptool index` again to go on without it"
        except Exception:  # noqa: BLE001 - ending the process matters more than the note
            tail = "; run `cliptool index` again"
        try:
            print(f"cliptool: error: {message}{tail}", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_HUNG)


Todo = list[tuple[Path, os.stat_result, "VideoRecord | None"]]

@dataclass
class FileResult:
    """What analysing one file of the plan gave: its analysis, or why it failed (`error`, and
    whether to remember the failure against this content), with the file's stat and
    fingerprint as they were when it was read. `fatal`: the run cannot go on (the model)."""

    path: Path
    st: os.stat_result
    old: VideoRecord | None
    fingerprint: str = ""
    analysed: AnalysedVideo | None = None
    error: str | None = None
    remember: bool = False
    fatal: str | None = None
    worker: str = ""  # who analysed it (a Ray actor's id; "" locally)
    words: list[Any] | None = None  # its words (Word.to_json each); None: they could not be read
    words_key: str = ""  # what they were made from (analysis.words.extract.words_key)
    words_error: str | None = None  # why its words could not be read (its pictures are kept)


def analyse_file(path: Path, st: os.stat_result, old: VideoRecord | None, model: ClipModel, options: IndexOptions,
                 watchdog: Watchdog, on_frame: Callable[[float], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> FileResult:
    """Reads one file of the plan: its stat and fingerprint now, then one analysis pass (timed
    by `watchdog`, and told each decoded frame's time through `on_frame`), then its words
    (`on_note` says so: the progress bar waits at the video's end meanwhile); any failure of the
    file becomes the result's error. The local loop and each Ray worker run this."""

    def frame_decoded(t: float) -> None:
        watchdog.progress(t)
        if on_frame is not None:
            on_frame(t)

    try:
        st = path.stat()  # as it is now: it may have been replaced since the run began
        with watchdog.file(path, st):
            fingerprint = file_fingerprint(path)
            screen = screen_tap(options, watchdog.progress)
            try:
                analysed = analyse_video(path, model, options, on_frame=frame_decoded,
                                         watch=screen.offer if screen is not None else None)
            except BaseException:
                if screen is not None:
                    screen.abort()
                raise
            if on_note is not None and options.words not in ("", "subtitles"):
                on_note(f"{path.name[-30:]}: reading its words")
            words, key, words_error = file_words(path, options, [t for s in analysed.scenes for t in s.sample_times],
                                                 duration=analysed.scenes[-1].end_time if analysed.scenes else None,
                                                 progress=watchdog.working, screen=screen)
    except KeyboardInterrupt:
        raise
    except ModelLoadError as exc:  # the model, not this file: the run cannot go on
        return FileResult(path, st, old, fatal=str(exc))
    except Exception as exc:  # noqa: BLE001 - a decoder or library fault on one file must not end the run
        error, remember = _error_of(exc, path)
        return FileResult(path, st, old, error=error, remember=remember)
    return FileResult(path, st, old, fingerprint, analysed, words=words, words_key=key, words_error=words_error)


def screen_tap(options: IndexOptions, progress: Callable[[], None] | None = None) -> Any:
    """A reader of screen text for the picture pass when `--words` asks for it (else None)."""
    from cliptool.analysis.words.extract import ScreenTap, sources_of

    return ScreenTap(options, progress=progress) if "screen" in sources_of(options) else None


def file_words(path: Path, options: IndexOptions, sample_times: list[float],
               names: list[str] | None = None, duration: float | None = None,
               progress: Callable[[], None] | None = None, screen: Any = None) -> tuple[list[Any] | None, str, str | None]:
    """A video's words as the store keeps them, what they were made from, and why they could
    not be read (then None, "": the next run tries again); a failure never fails the video.
    screen: the ScreenTap that read the picture pass's frames (`screen_tap`), if any."""
    from cliptool.analysis.words.extract import read_words, words_key

    key = words_key(path, options, names)  # before reading: a sidecar changed meanwhile is read again next run
    notes: list[str] = []
    try:
        words = read_words(path, options, sample_times, report=notes.append, names=names, duration=duration,
                           progress=progress, screen=screen)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - an engine's fault on one file must not lose its pictures
        return None, "", f"{type(exc).__name__}: {one_line(exc)}"
    finally:
        if screen is not None:
            screen.abort()  # ends its thread if speech failed before it was finished (no-op after)
    return [w.to_json() for w in words], key, "; ".join(notes) or None


def _error_of(exc: Exception, path: Path) -> tuple[str, bool]:
    """A failed file's one-line error, and whether to remember it (content failures are, so an
    unchanged bad file is not retried; passing ones, such as a timeout or I/O error, are not)."""
    if isinstance(exc, FileTimeoutError):
        return str(exc), False
    if isinstance(exc, VideoError):
        return one_line(exc).removeprefix(f"{path}: "), True
    if isinstance(exc, OSError):
        return exc.strerror or str(exc), False
    if isinstance(exc, MemoryError):
        return "out of memory", True
    return f"{type(exc).__name__}: {one_line(exc)}", True
