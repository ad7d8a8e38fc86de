"""Speech in a video's audio track as timed words: pocketsphinx (bundled English model, nothing
to download) or faster-whisper (a CTranslate2 Whisper model by name or folder).

The track is decoded with PyAV at 16 kHz mono; a cheap voice activity detector (vad.py) picks
the stretches that may hold speech, and only those go to the recogniser, so silence and music
cost nothing past decoding.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.analysis.words.audio import RATE, read_audio, to_pcm16
from cliptool.analysis.words.base import Word
from cliptool.analysis.words.vad import voiced_regions
from cliptool.errors import ModelUnavailableError, UsageError, one_line

ENGINES = ("pocketsphinx", "whisper")
UTTERANCE_GRACE = 2.0  # s of recognition a second of audio may take before --file-timeout counts
LONG_S = 30  # s: a voiced region longer than this goes to pocketsphinx in pieces of CHUNK_S
CHUNK_S = 5
WHISPER_DEFAULT = "base"  # faster-whisper's name; about 145 MB, near real time on a laptop CPU
# pocketsphinx settings over its defaults. Its second passes (fwdflat, bestpath) stay on: with
# them 24 of the bench's 32 sentences had every key word heard, against 19 with the first pass
# alone, for the same CPU time (docs/benchmarks.md#speech-and-on-screen-text); `--said` needs
# every word of the query.
POCKETSPHINX_SETTINGS: dict[str, Any] = {}
_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_HUB_ADVICE = ("on a machine with network run `hf download {repo}` (or huggingface_hub.snapshot_download), "
               "copy the folder here and pass --model /path/to/folder")


def _grace(seconds: float) -> float:
    """How long one recogniser call on `seconds` of audio may take (it cannot report meanwhile)."""
    return UTTERANCE_GRACE * seconds + 1.0


def transcribe(path: Path, engine: str = "pocketsphinx", model: str | None = None, language: str | None = None,
               *, vad: bool = True, progress: Callable[..., None] | None = None) -> list[Word]:
    """The words spoken in `path`'s audio track, with their times (source "speech"); [] when the
    file has no audio track or nobody speaks. `model`: for pocketsphinx a folder holding an
    acoustic model (with its `*.lm.bin` or `*.lm` and `*.dict`), default the bundled US English
    one; for whisper a faster-whisper model name ("base", "small", ...) or a local folder.
    `vad=False` decodes the whole track (for measuring what the detector saves). `progress` is
    called every few seconds of audio recognised (an index run's watchdog sees work going on),
    and before each voiced region with the seconds its recognition may take (`progress(grace)`).
    Errors are one line (CliptoolError)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown speech engine {engine!r}; choose one of {', '.join(ENGINES)}")
    recogniser = _open_engine(engine, model, language)  # before decoding: a missing model fails fast
    samples = read_audio(Path(path))
    if samples is None or len(samples) < RATE // 10:
        return []
    regions = voiced_regions(samples, RATE) if vad else [(0.0, len(samples) / RATE)]
    words: list[Word] = []
    for start, end in regions:
        piece = samples[int(start * RATE):int(end * RATE)]
        if progress is not None:  # one utterance is one call that cannot report: a grace for it
            progress(_grace(len(piece) / RATE))
        words.extend(recogniser(piece, start, progress))
    return words


def check_speech(engine: str = "pocketsphinx", model: str | None = None, language: str | None = None) -> None:
    """A one-line error (CliptoolError) when `transcribe` could not run with these settings: an
    unknown engine, a language the model does not speak, a missing package or model. For
    pocketsphinx the model is loaded (a fraction of a second); for whisper only found."""
    if engine not in ENGINES:
        raise UsageError(f"unknown speech engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "pocketsphinx":
        _open_engine(engine, model, language)
        return
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        raise ModelUnavailableError("the whisper engine needs faster-whisper: pip install 'cliptool[whisper]'") \
            from None
    whisper_folder(model or WHISPER_DEFAULT)


_OPEN = threading.local()  # each thread's recognisers, by settings: a model is loaded once, not per video


def _open_engine(engine: str, model: str | None, language: str | None) -> Any:
    """A function (samples, offset in s) -> Words for the chosen engine; loaded once per thread
    and settings (pocketsphinx takes about a second to load, whisper several; neither decoder
    may be shared between threads)."""
    opened = getattr(_OPEN, "engines", None)
    if opened is None:
        opened = _OPEN.engines = {}
    key = (engine, model, language)
    if key not in opened:
        opened.clear()  # one at a time: another settings' model is let go
        opened[key] = _Sphinx(model, language) if engine == "pocketsphinx" else _Whisper(model, language)
    return opened[key]


class _Sphinx:
    """pocketsphinx 5: one Decoder, one utterance per voiced region; word times from its segments."""

    def __init__(self, model: str | None, language: str | None) -> None:
        if language and language.split("-")[0].lower() not in ("en", "eng"):
            raise UsageError(f"pocketsphinx's bundled model is English; for {language!r} use --speech-engine whisper "
                             "or give a pocketsphinx model folder for that language with --speech-model")
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise ModelUnavailableError(f"the pocketsphinx engine needs the Python package pocketsphinx "
                                        f"(pip install pocketsphinx): {one_line(exc)}") from None
        config: dict[str, Any] = {"samprate": RATE, "loglevel": "FATAL", **POCKETSPHINX_SETTINGS}
        if model:
            config.update(_sphinx_model_files(Path(model).expanduser()))
        self.language = (language or "en").split("-")[0].lower()[:2]
        try:
            self.decoder = Decoder(**config)
        except Exception as exc:  # noqa: BLE001 - a bad model folder raises RuntimeError and kin
            raise ModelUnavailableError(f"pocketsphinx cannot load its model: {one_line(exc)}") from None

    def __call__(self, samples: np.ndarray, offset: float, progress: Callable[..., None] | None = None) -> list[Word]:
        d = self.decoder
        d.start_utt()
        if len(samples) <= LONG_S * RATE:  # whole: the utterance's own cepstral mean (the best reading)
            d.process_raw(to_pcm16(samples), full_utt=True)
        else:  # a long region in pieces, telling `progress` between
            for a in range(0, len(samples), CHUNK_S * RATE):
                d.process_raw(to_pcm16(samples[a:a + CHUNK_S * RATE]), False, False)
                if progress is not None:
                    progress(_grace(CHUNK_S))
        if progress is not None:  # the second passes over the whole utterance are one call too
            progress(_grace(len(samples) / RATE))
        d.end_utt()
        if d.hyp() is None:
            return []
        frate = 100.0  # pocketsphinx's frames per second
        out = []
        for seg in d.seg():
            word = re.sub(r"\(\d+\)$", "", seg.word)  # "to(3)": the third pronunciation of "to"
            if _FILLER.match(word):
                continue
            start = offset + seg.start_frame / frate
            end = max(start, offset + (seg.end_frame + 1) / frate)
            out.append(Word(round(start, 2), round(end, 2), word, "speech", self.language))
        return out


def _sphinx_model_files(folder: Path) -> dict[str, str]:
    """The pocketsphinx settings for a model folder: the acoustic model (the folder holding
    `mdef`), the language model and the dictionary found under it."""
    if not folder.is_dir():
        raise ModelUnavailableError(f"pocketsphinx model folder {folder} does not exist")
    mdefs = sorted(folder.rglob("mdef"))
    lms = sorted(folder.rglob("*.lm.bin")) or sorted(folder.rglob("*.lm"))
    dicts = sorted(folder.rglob("*.dict"))
    if not (mdefs and lms and dicts):
        raise ModelUnavailableError(f"{folder} is not a pocketsphinx model: it needs an acoustic model (mdef and "
                                    f"its files), a language model (*.lm.bin or *.lm) and a dictionary (*.dict)")
    return {"hmm": str(mdefs[0].parent), "lm": str(lms[0]), "dict": str(dicts[0])}


class _Whisper:
    """faster-whisper: the model once, then each voiced region with word timestamps."""

    def __init__(self, model: str | None, language: str | None) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelUnavailableError("the whisper engine needs faster-whisper: pip install 'cliptool[whisper]'") \
                from None
        folder = whisper_folder(model or WHISPER_DEFAULT)
        self.language = language.split("-")[0].lower() if language else None
        try:
            self.model = WhisperModel(str(folder), device="cpu", compute_type="int8",
                                      cpu_threads=min(4, os.cpu_count() or 1))
        except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError for a bad folder
            raise ModelUnavailableError(f"cannot load the whisper model in {folder}: {one_line(exc)}") from None

    def __call__(self, samples: np.ndarray, offset: float, progress: Callable[..., None] | None = None) -> list[Word]:
        segments, info = self.model.transcribe(samples.astype(np.float32), language=self.language,
                                               word_timestamps=True, vad_filter=False, beam_size=1,
                                               condition_on_previous_text=False)
        lang = self.language or getattr(info, "language", "") or ""
        last = offset + len(samples) / RATE  # Whisper sees 30 s windows: keep its times inside the region
        out = []
        for seg in segments:
            if progress is not None:  # the next segment may be a window of up to 30 s decoded in one call
                progress(_grace(min(30.0, len(samples) / RATE)))
            for w in seg.words or []:
                text = w.word.strip()
                if text:
                    start = min(last, offset + max(0.0, float(w.start)))
                    end = min(last, max(start, offset + float(w.end)))
                    out.append(Word(round(start, 2), round(end, 2), text, "speech", lang,
                                    confidence=min(1.0, max(0.0, float(w.probability)))))
        return out


def whisper_folder(model: str) -> Path:
    """The local folder of a faster-whisper model: `model` itself when it is a folder, else the
    named model from the Hugging Face cache, downloaded when it is not there and the hub answers."""
    from faster_whisper.utils import download_model

    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model.bin").is_file():
            raise ModelUnavailableError(f"{local} is not a faster-whisper (CTranslate2) model folder: no model.bin")
        return local
    if "/" in model and (model.startswith((".", "/", "~")) or local.suffix):
        raise ModelUnavailableError(f"whisper model folder {model} does not exist")
    repo = model if "/" in model else f"Systran/faster-whisper-{model}"
    try:
        return Path(download_model(model, local_files_only=True))
    except ValueError as exc:  # an unknown size name
        raise UsageError(f"unknown whisper model {model!r}: {one_line(exc)}") from None
    except Exception:  # noqa: BLE001 - not in the cache (LocalEntryNotFoundError and kin)
        pass
    advice = _HUB_ADVICE.format(repo=repo)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailableError(f"whisper model {model!r} is not in the local Hugging Face cache and "
                                    f"HF_HUB_OFFLINE is set; {advice}")
    from cliptool.models.common import failure_line, hub_reachable

    if not hub_reachable("huggingface.co"):
        raise ModelUnavailableError(f"whisper model {model!r} is not in the local Hugging Face cache and "
                                    f"huggingface.co cannot be reached (no network?); {advice}")
    try:
        return Path(download_model(model))
    except Exception as exc:  # noqa: BLE001 - hub, HTTP and disk errors of many kinds
        raise ModelUnavailableError(failure_line(exc, f"cannot download whisper model {model!r}")) from None
