"""Stage 5: CLIP embeddings of frames, photos and text with open_clip."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from cliptool.config import cache_entry
from cliptool.errors import ModelUnavailableError, one_line
from cliptool.models.common import failure_line
from cliptool.models.loading import load_open_clip, preprocess_cfg, quick_check
from cliptool.models.onnx_tower import is_cached
from cliptool.models.spec import PRECISIONS, ModelSpec
from cliptool.models.text import SharedScope
from cliptool.models.views import DEFAULT_VIEWS, frame_views, whole


def preprocess_rgb(rgb: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """CLIP input from an RGB uint8 image: shortest side to `size`, centre crop, normalise.

    Returns a float32 array of shape (3, size, size). Used alike for video frames and photos.
    """
    import cv2

    from cliptool.media.decode import area_resize

    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if scale < 1:  # halvings first: 2-4x cheaper than one area resize of a full HD frame
        resized = area_resize(np.ascontiguousarray(rgb), nw, nh)
    else:
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_CUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = resized[top : top + size, left : left + size].astype(np.float32) * (1.0 / 255.0)
    return ((crop - mean) / std).transpose(2, 0, 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ClipModel:
    """An open_clip model on the CPU, ready to embed images and text.

    With a local checkpoint file (or an int8 tower already cached) the model loads in a
    background thread, so a caller can start decoding at once; every method waits for the load
    and raises its error. Cheap checks (config file, model name, checkpoint file present) still
    fail here, at construction. At int8 the open_clip model itself is loaded only when needed:
    to export the tower the first time, or to encode text.
    """

    def __init__(self, spec: ModelSpec, background: bool | None = None, threads: int = 0) -> None:
        """`threads`: the int8 tower's threads (0: one per core); an indexer decoding beside it
        gives it fewer, since on 2 cores one thread does the same work with 20% less CPU."""
        import threading

        self.spec = spec.resolved()
        self.precision = self.spec.precision
        self.threads = threads
        if self.precision not in PRECISIONS:
            raise ModelUnavailableError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        self._lock = threading.Lock()
        self._open_clip_lock = threading.Lock()
        self._loaded = threading.Event()
        self._error: BaseException | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._tower: Any = None  # the OnnxImageTower at int8
        self._omp_env_set = _set_omp_passive()  # for torch's import; restored once loaded
        quick = quick_check(self.spec)
        if background is None:
            background = quick or (self.precision == "int8" and is_cached(self.spec.identity()))
        if background:
            threading.Thread(target=self._load_in_background, name="cliptool-model-load", daemon=True).start()
            _settle_at_exit()
        else:
            self._load()
            self._wait()

    def _load(self) -> None:
        try:
            if self.precision == "int8":
                self._load_tower()
            else:
                self._load_open_clip()
        except BaseException as exc:  # kept and raised by every later call
            self._error = exc
        finally:
            if self._omp_env_set:
                os.environ.pop(_OMP_ENV, None)
                self._omp_env_set = False
            self._loaded.set()

    def _load_open_clip(self) -> None:
        bf16 = self.precision == "bf16"
        self._model, self._tokenizer = load_open_clip(self.spec, visual_bf16=bf16)
        if bf16:
            import torch

            self._model.visual.to(torch.bfloat16)  # no-op when loaded so
        cfg = preprocess_cfg(self._model)
        size = cfg.get("size", 224)
        self._image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._mean = np.asarray(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=np.float32)
        self._std = np.asarray(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=np.float32)
        self._dim = int(self._encode_text([""]).shape[1])

    def _load_tower(self) -> None:
        from cliptool.models import onnx_tower

        identity = self.spec.identity()
        tower = onnx_tower.load_cached(identity, self.threads)
        if tower is None:  # first use of this model at int8: export it once from open_clip
            self._load_open_clip()
            if sys.stderr.isatty():
                print(f"preparing the int8 image tower of {self.spec.model_name} (once per model)", file=sys.stderr)
            try:
                tower = onnx_tower.export(self._model.visual, identity, self._image_size, self._mean, self._std, self._dim,
                                         self.threads)
            except Exception as exc:  # noqa: BLE001 - exporter and quantiser raise many kinds
                raise ModelUnavailableError(
                    failure_line(exc, f"cannot prepare the int8 image tower of {self.spec.model_name}")
                    + "; use --precision bf16 or fp32"
                ) from None
        self._tower = tower
        self._image_size, self._mean, self._std, self._dim = tower.image_size, tower.mean, tower.std, tower.dim

    def _need_open_clip(self) -> None:
        """Loads the open_clip model too, at int8 where only the tower was loaded."""
        self._wait()
        with self._open_clip_lock:
            if self._model is None:
                self._load_open_clip()  # its error is raised here, and the image tower keeps working

    def _load_in_background(self) -> None:
        # Importing torch and open_clip is mostly Python holding the GIL; with the default 5 ms
        # switch interval a decode loop beside it waits up to 5 ms every time it takes the GIL
        # back from a C call (several times a frame). A short interval while loading keeps it going.
        with _short_switch_interval(0.0005):
            self._load()

    def _wait(self) -> None:
        self._loaded.wait()
        if self._error is not None:
            raise self._error

    def wait(self) -> ClipModel:
        """Blocks until the model is loaded; raises its load error."""
        self._wait()
        return self

    @property
    def image_size(self) -> int:
        """The side of the square images the image tower takes."""
        self._wait()
        return self._image_size

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        self._wait()
        return self._dim

    @property
    def torch_model(self) -> Any:
        """The open_clip model (loaded now at int8, where only the tower was loaded)."""
        self._need_open_clip()
        return self._model

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """An RGB uint8 image as the image tower's (3, S, S) float32 input."""
        self._wait()
        return preprocess_rgb(rgb, self._image_size, self._mean, self._std)

    def preprocess_views(self, rgb: np.ndarray, views: str = DEFAULT_VIEWS) -> np.ndarray:
        """An RGB uint8 picture as the tower's inputs for each of its views (models.views):
        (K, 3, S, S) float32."""
        self._wait()
        return frame_views(rgb, self._image_size, self._mean, self._std, views)

    def encode_picture(self, rgb: np.ndarray, views: str = DEFAULT_VIEWS) -> np.ndarray:
        """One vector for a whole picture (a query photo): the normalised mean of its views'."""
        return whole(self.encode_preprocessed(self.preprocess_views(rgb, views)))

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, D) L2-normalised float32."""
        self._wait()
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tower is not None:
            return _normalise(self._tower.encode(batch))
        import torch

        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if self.precision == "bf16":
                x = x.to(torch.bfloat16)
            feats = self._model.encode_image(x)
        return _normalise(feats.float().numpy())

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images of any size -> (N, D) L2-normalised vectors."""
        self._wait()
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_preprocessed(np.stack([self.preprocess(im) for im in images]))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, D) L2-normalised vectors, with open_clip (torch)."""
        self._need_open_clip()
        return self._encode_text(texts)

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            feats = self._model.encode_text(self._tokenizer(texts))
        return _normalise(feats.float().numpy())

    def export_text_encoder(self, index_dir: Path, report: Callable[[str], None] | None = None) -> bool:
        """Writes the text tower for torch-free search (textenc: ONNX) into `index_dir`, once per model.

        Returns whether an export is in place. Waits for the model (and raises its load error).
        A text tower the exporter cannot cover is recorded in the user cache (keyed by the
        model's identity and the exporter's version) and said once, in one line through
        `report` (default: stderr); later calls return False at once, without loading
        open_clip, and search uses open_clip (see `fast_text_unavailable`). A failure to write
        is reported and not recorded: the next run tries again.
        """
        from cliptool.models.text import META_FILE, add_int8_variant, export_text_encoder

        self._wait()
        say = report or (lambda message: print(message, file=sys.stderr))
        index_dir = Path(index_dir)
        identity = self.spec.identity()
        if not text_export_due(index_dir, identity):
            return True
        # Exported once per model into the user cache (text is fp32 at every precision), then
        # copied into each index, which stays whole if the cache is cleared.
        text_spec = self.spec.with_precision("fp32")
        cached = _text_cache_entry(text_spec)
        try:
            if not (cached / META_FILE).is_file():
                if fast_text_unavailable(text_spec) is not None:
                    return False  # recorded by an earlier run, which said why
                self._need_open_clip()
                if sys.stderr.isatty():
                    print(f"preparing the fast text tower of {self.spec.model_name} (once per model)", file=sys.stderr)
                try:
                    export_text_encoder(self._model, self.spec.model_name, cached, tokenizer=self._tokenizer)
                except NotImplementedError as exc:
                    reason = one_line(exc).removeprefix("text export: ")
                    _record_unsupported(text_spec, reason)
                    say(f"note: the fast text search path cannot run {self.spec.model_name}'s text tower "
                        f"({reason}); text search will use open_clip, which starts slower")
                    return False
            if not _has_int8_entry(cached):  # exported before int8 towers: its variant is added once
                add_int8_variant(cached)
            _install_text_export(cached, index_dir, identity)
        except OSError as exc:
            say(f"warning: could not write the fast text encoder ({exc.strerror or one_line(exc)}); "
                "text search will use open_clip until an index run writes it")
            return False
        return True


    def link_cached_text_encoder(self, index_dir: Path) -> bool:
        """Puts the text tower the user cache already holds for this model into `index_dir`
        (hard links: no torch, no waiting for the model), so that an index run cut short after
        its first commit still searches on the fast path. False when there is none to link yet
        (the run's end exports it) or the index has it already."""
        from cliptool.models.text import META_FILE

        identity = self.spec.identity()
        cached = _text_cache_entry(self.spec.with_precision("fp32"))
        if not text_export_due(index_dir, identity) or not (cached / META_FILE).is_file() or not _has_int8_entry(cached):
            return False
        try:
            _install_text_export(cached, Path(index_dir), identity)
        except OSError:
            return False  # the run's end tries again, and says why
        return True


def _install_text_export(cached: Path, index_dir: Path, identity: str) -> None:
    """Copies (hard-links) an export of the user cache into the index and marks it as the
    model's; the marker is written last, so a half-copied export is never taken for one."""
    from cliptool.models.text import copy_export

    from cliptool import durable

    copy_export(cached, index_dir / TEXTENC_DIR)  # synced, then the marker that names it
    files = {f.name: durable.digest(f) for f in sorted((index_dir / TEXTENC_DIR).iterdir())
             if f.is_file() and not f.name.startswith(".")}
    durable.stamp_verified(index_dir / TEXTENC_DIR, files)
    durable.write_text(index_dir / TEXTENC_MARKER, json.dumps({"model_identity": identity, "files": files}))
    _remove_old_text_export(index_dir)


_AT_EXIT: list[bool] = []


def _settle_at_exit() -> None:
    if not _AT_EXIT:
        import atexit

        atexit.register(settle_threads, 120.0)  # a first-use export can take a while
        _AT_EXIT.append(True)


def settle_threads(limit: float = 30.0) -> None:
    """Waits (bounded) for cliptool's worker threads (model load, embedding) to stop.

    A process that exits while such a daemon thread is inside torch's or ONNX Runtime's C++
    code aborts ("terminate called without an active exception") instead of exiting cleanly;
    a ClipModel loading in the background has it run at exit. A thread
    counts as running while it has a Python frame (its Thread object may not say so when
    Ctrl-C landed inside its start()).
    """
    import threading
    import time

    deadline = time.monotonic() + limit
    me = threading.get_ident()
    try:
        while time.monotonic() < deadline:
            running = sys._current_frames()
            if not any(t.ident in running and t.ident != me for t in threading.enumerate()
                       if t.name.startswith("cliptool-") and t.name != "cliptool-watchdog"):
                return
            time.sleep(0.05)
    except BaseException:  # noqa: BLE001 - a second Ctrl-C: stop waiting
        return


@contextmanager
def threads_settled_on_error() -> Iterator[None]:
    """Runs the block; if it raises (Ctrl-C included), waits for the worker threads first."""
    try:
        yield
    except BaseException:
        settle_threads()
        raise


TEXTENC_CACHE_VERSION = 2  # 1: the numpy encoder's arrays; 2: an ONNX model
TEXTENC_DIR = "textenc-onnx"
TEXTENC_MARKER = "textenc-onnx-model.json"
_OLD_TEXTENC = ("textenc-model.json", "textenc")  # the numpy encoder's marker and folder (cliptool before ONNX)


def _remove_old_text_export(index_dir: Path) -> None:
    """Deletes the numpy encoder's export an older cliptool wrote into the index (marker first)."""
    import shutil

    marker, folder = (Path(index_dir) / name for name in _OLD_TEXTENC)
    marker.unlink(missing_ok=True)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)


def text_encoder_identity(index_dir: Path) -> str | None:
    """The model identity whose text tower is exported in `index_dir`, or None."""
    try:
        return json.loads((Path(index_dir) / TEXTENC_MARKER).read_text()).get("model_identity")
    except (OSError, ValueError, AttributeError):
        return None


def text_export_damage(index_dir: Path, precision: str | None = None) -> str | None:
    """What of the index's text tower export fails the checksums its marker records (None: all
    match, or a marker from before checksums). `precision`: only the files it loads ("int8"
    or "fp32"), each read once per change of it; None: every file, read in full (`check`)."""
    from cliptool import durable

    try:
        files = json.loads((Path(index_dir) / TEXTENC_MARKER).read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return f"the text tower export's marker ({TEXTENC_MARKER}) is unreadable"
    skip = {"int8": "text.onnx", "fp32": "text-int8.onnx"}.get(precision or "", "\0")
    wanted = {name: checksum for name, checksum in sorted(files.items()) if not name.startswith(skip)}
    bad = durable.first_damaged(Path(index_dir) / TEXTENC_DIR, wanted, full=precision is None)
    return None if bad is None else f"the index's text tower export ({TEXTENC_DIR}/{bad}) fails its checksum"


def remove_text_export(index_dir: Path) -> None:
    """Deletes the index's text tower export, marker first (the next index run writes it again)."""
    import shutil

    (Path(index_dir) / TEXTENC_MARKER).unlink(missing_ok=True)
    shutil.rmtree(Path(index_dir) / TEXTENC_DIR, ignore_errors=True)


def text_export_due(index_dir: Path, identity: str) -> bool:
    """Whether the index's text export is missing, another model's, or older than int8 towers."""
    return text_encoder_identity(index_dir) != identity or not _has_int8_entry(Path(index_dir) / TEXTENC_DIR)


def _has_int8_entry(export: Path) -> bool:
    """Whether an export's meta says how its int8 variant went (made, or why not)."""
    from cliptool.models.text import export_meta

    return "int8" in (export_meta(export) or {})


def _text_cache_entry(spec: ModelSpec) -> Path:
    """Where the text tower of an fp32 spec is exported in the user cache."""
    return cache_entry("text-towers", spec.identity(), TEXTENC_CACHE_VERSION)


def _unsupported_marker(spec: ModelSpec) -> Path:
    entry = _text_cache_entry(spec)
    return entry.with_name(entry.name + ".unsupported.json")


def _record_unsupported(spec: ModelSpec, reason: str) -> None:
    """Remembers that the exporter rejects this model's text tower (see fast_text_unavailable)."""
    from cliptool.models.text import EXPORTER_VERSION

    marker = _unsupported_marker(spec)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"model_identity": spec.identity(), "exporter_version": EXPORTER_VERSION,
                               "reason": reason}))
    os.replace(tmp, marker)


def fast_text_unavailable(spec: ModelSpec) -> str | None:
    """Why the torch-free text encoder cannot run this model, as recorded when its export was
    rejected (by this version of the exporter), else None. Any precision of the spec will do."""
    from cliptool.models.text import EXPORTER_VERSION

    spec = spec.resolved().with_precision("fp32")
    try:
        record = json.loads(_unsupported_marker(spec).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("model_identity") != spec.identity() \
            or record.get("exporter_version") != EXPORTER_VERSION:
        return None
    return str(record.get("reason") or "text tower not supported")


_SAID_SLOW_TEXT: set[str] = set()


def warn_slow_text_path(spec: ModelSpec, stream: TextIO | None = None) -> None:
    """Says once per process and model, in one line on stderr, that text queries run in
    open_clip (torch), the slower path, and why."""
    identity = spec.resolved().identity()
    if identity in _SAID_SLOW_TEXT:
        return
    _SAID_SLOW_TEXT.add(identity)
    reason = fast_text_unavailable(spec) or ("the index holds no exported text encoder for its model "
                                             "(an index run with this cliptool writes it)")
    print(f"cliptool: text queries run in open_clip (torch), the slower path: {reason}", file=stream or sys.stderr)


# -- process-wide settings, changed only for as long as a model loads ------------------------

_OMP_ENV = "OMP_WAIT_POLICY"


def _set_omp_passive() -> bool:
    """Sets OMP_WAIT_POLICY=PASSIVE for torch's OpenMP runtime, which reads it when torch is
    imported: idle OpenMP threads then sleep instead of spinning, and the decoder's threads get
    those cores between batches (about 12% less CPU for an index run on 2 cores). Returns
    whether it was set (the user's own value and an imported torch are left alone); the model
    removes it again once loaded."""
    if "torch" in sys.modules or _OMP_ENV in os.environ:
        return False
    os.environ[_OMP_ENV] = "PASSIVE"
    return True


def _shorten_switch_interval(seconds: float) -> float:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(min(saved, seconds))
    return saved


_short_switch_interval = SharedScope(_shorten_switch_interval, sys.setswitchinterval)
