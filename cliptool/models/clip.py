"""Stage 5: CLIP embeddings of frames, photos and text with open_clip."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from cliptool.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, cache_entry
from cliptool.errors import ModelUnavailableError, one_line
from cliptool.models.onnx_tower import is_cached
from cliptool.models.text import SharedScope

_HASH_CHUNK = 1 << 20
PRECISIONS = ("int8", "bf16", "fp32")
DEFAULT_PRECISION = "int8"


def file_fingerprint(path: Path) -> str:
    """Cheap content fingerprint: size plus hashes of the first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_HASH_CHUNK))
        if size > _HASH_CHUNK:
            f.seek(max(_HASH_CHUNK, size - _HASH_CHUNK))
            h.update(f.read(_HASH_CHUNK))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """Which open_clip model and weights to use.

    `name` is an open_clip model name or the path of a model config JSON file, or a model
    folder or `hf-hub:ORG/NAME` repository (see hf_models), whose weights come with it;
    `pretrained` is an open_clip pretrained tag (downloaded once), a local checkpoint file or
    `hf-hub:ORG/NAME[/FILE]` (open_clip weights in a hub repository).
    `precision` is the image tower's number format: "int8" (default: the tower exported once
    to ONNX Runtime with int8 weights; no torch at index time), "bf16" (open_clip with bfloat16
    weights, about twice fp32's speed on CPUs with bf16 instructions) or "fp32" (open_clip as
    is: the exact path). Text is always encoded in fp32.
    """

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    precision: str = DEFAULT_PRECISION

    @property
    def config_path(self) -> Path | None:
        """The model config JSON file, when `name` is one."""
        return Path(self.name) if self.name.endswith(".json") else None

    @property
    def checkpoint_path(self) -> Path | None:
        """The local checkpoint file, when `pretrained` names one rather than a tag."""
        if self.pretrained.startswith("hf-hub:"):
            return None
        p = Path(self.pretrained).expanduser()
        looks_like_path = os.sep in self.pretrained or p.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        return p if looks_like_path or p.is_file() else None

    @property
    def model_name(self) -> str:
        """The name open_clip knows the architecture by."""
        cfg = self.config_path
        if cfg is None and _is_model_source(self.name):
            from cliptool.models.hf import registry_name

            return registry_name(self.name)
        return cfg.stem if cfg else self.name

    def resolved(self) -> ModelSpec:
        """The same spec with absolute paths, so it can be recorded and reused from anywhere."""
        if _is_model_source(self.name):  # a folder or hub model: its weights come with it
            from cliptool.models.hf import resolved_name

            if self.pretrained not in ("", DEFAULT_PRETRAINED):
                raise ModelUnavailableError(f"--pretrained does not apply to --model {self.name} "
                                            "(a model folder or hf-hub: name brings its own weights)")
            return ModelSpec(resolved_name(self.name), "", self.precision)
        name = str(self.config_path.resolve()) if self.config_path else self.name
        ckpt = self.checkpoint_path
        return ModelSpec(name, str(ckpt.resolve()) if ckpt else self.pretrained, self.precision)

    def identity(self) -> str:
        """A string that changes whenever the model's embeddings could change."""
        if _is_model_source(self.name):  # a folder's file fingerprints, a hub repository's name
            from cliptool.models.hf import source_identity

            return "/".join([source_identity(self.name)] + ([self.precision] if self.precision != "fp32" else []))
        parts = [self.model_name]
        cfg = self.config_path
        if cfg is not None:
            parts.append("config:" + file_fingerprint(cfg) if cfg.is_file() else "config:missing")
            text_files = _text_tower_files(cfg)
            if text_files:  # a local Hugging Face text tower: its config and tokenizer count too
                parts.append("text:" + _fingerprints(text_files))
        ckpt = self.checkpoint_path
        if ckpt is not None:
            parts.append("file:" + (file_fingerprint(ckpt) if ckpt.is_file() else "missing"))
        else:
            parts.append(self.pretrained)
        if self.precision != "fp32":  # fp32 identities stay those of indexes made before precisions
            parts.append(self.precision)
        return "/".join(parts)

    @classmethod
    def from_record(cls, record: dict[str, str]) -> ModelSpec:
        """The spec an index recorded; indexes made before precisions existed are fp32."""
        return cls(**{"precision": "fp32", **record})

    def same_model(self, other: ModelSpec) -> bool:
        """Same architecture and weights, whatever the precision (both specs resolved)."""
        return (self.name, self.pretrained) == (other.name, other.pretrained)

    def with_precision(self, precision: str) -> ModelSpec:
        """The same model at another precision."""
        return ModelSpec(self.name, self.pretrained, precision)

    def to_dict(self) -> dict[str, str]:
        """The spec as an index records it."""
        return {"name": self.name, "pretrained": self.pretrained, "precision": self.precision}


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
        quick = _quick_check(self.spec)
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
        self._model, self._tokenizer = _load(self.spec, visual_bf16=bf16)
        if bf16:
            import torch

            self._model.visual.to(torch.bfloat16)  # no-op when loaded so
        cfg = _preprocess_cfg(self._model)
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
                    _cause(exc, f"cannot prepare the int8 image tower of {self.spec.model_name}")
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
        from cliptool.models.text import META_FILE, add_int8_variant, copy_export, export_text_encoder

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
            copy_export(cached, index_dir / TEXTENC_DIR)
            marker = index_dir / TEXTENC_MARKER
            tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"model_identity": identity}))
            os.replace(tmp, marker)
            _remove_old_text_export(index_dir)
        except OSError as exc:
            say(f"warning: could not write the fast text encoder ({exc.strerror or one_line(exc)}); "
                "text search will use open_clip until an index run writes it")
            return False
        return True


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

_NOISY_LOGGERS = ("open_clip", "huggingface_hub", "timm", "")  # "": the root logger, which open_clip logs to


def _silence_loggers(level: int) -> tuple[dict[str, int], Any]:
    """Raises the noisy loggers to `level`; returns their levels and a handler added to the
    root logger (so that open_clip's logging.warning calls do not install one of their own)."""
    import logging

    saved = {name: logging.getLogger(name or None).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    handler = None
    if not root.handlers:
        handler = logging.NullHandler()
        root.addHandler(handler)
    return saved, handler


def _restore_loggers(state: tuple[dict[str, int], Any]) -> None:
    import logging

    saved, handler = state
    for name, level in saved.items():
        logging.getLogger(name or None).setLevel(level)
    if handler is not None:
        logging.getLogger().removeHandler(handler)


_quiet_loggers = SharedScope(_silence_loggers, _restore_loggers)


# -- loading a model with open_clip ----------------------------------------------------------


def _text_tower_files(cfg: Path) -> tuple[Path, ...]:
    from cliptool.models.hf import config_text_tower

    return config_text_tower(cfg)[1]


def _fingerprints(files: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(f"\0{path.parent.name}/{path.name}\0{file_fingerprint(path)}".encode())
    return h.hexdigest()[:16]


def _with_absolute_text_tower(cfg: Path) -> Path:
    """The config file to register: `cfg` itself, or, when it names its local Hugging Face text
    tower relative to itself, a copy in the user cache naming it absolutely (open_clip would
    look for it relative to the working directory)."""
    from cliptool.models.hf import config_text_tower

    resolved, _ = config_text_tower(cfg)
    if resolved is None:
        return cfg
    text = json.dumps(resolved, indent=1, sort_keys=True)
    path = cache_entry("model-configs", text, 1) / cfg.name  # open_clip names the model by the file's stem
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def _validate_config(cfg: Path) -> None:
    """A model config JSON must exist and parse."""
    if not cfg.is_file():
        raise ModelUnavailableError(f"model config not found: {cfg}")
    try:
        json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"model config {cfg} is not valid JSON ({exc})") from None


def _is_model_source(name: str) -> bool:
    """Whether a model name is a model folder or an hf-hub: repository (see hf_models)."""
    from cliptool.models.hf import is_model_source

    return is_model_source(name)


def _quick_check(spec: ModelSpec) -> bool:
    """Checks a spec without importing open_clip; True when loading may go to the background
    (a local checkpoint file and a model open_clip is sure to know, or a model folder)."""
    if _is_model_source(spec.name):
        from cliptool.models.hf import quick_check

        return quick_check(spec.name)
    cfg = spec.config_path
    if cfg is not None:
        _validate_config(cfg)
    ckpt = spec.checkpoint_path
    if ckpt is None:
        return False  # a pretrained tag: check and download in the foreground
    if not ckpt.is_file():
        raise ModelUnavailableError(f"checkpoint file not found: {ckpt}")
    if cfg is not None:
        return True
    import importlib.util

    try:
        found = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):  # a broken install: the load says what is missing
        return False
    locations = list(found.submodule_search_locations or []) if found else []
    return any((Path(loc) / "model_configs" / f"{spec.model_name}.json").is_file() for loc in locations)


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


# pip names of the packages a model load imports, where they differ from the module's name
_PIP_NAMES = {"open_clip": "open_clip_torch", "cv2": "opencv-python", "PIL": "pillow", "sklearn": "scikit-learn"}


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == 12:  # ENOMEM
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("not enough memory", "can't allocate memory", "Cannot allocate memory", "out of memory"))


def _detail(exc: BaseException, limit: int = 200) -> str:
    """An error's message on one line (torch puts the useful part on the next lines), cut."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cause(exc: BaseException, what: str) -> str:
    """One line: `what` failed, and why (a missing package, memory, or the error itself)."""
    detail = _detail(exc)
    if isinstance(exc, ImportError):
        module = (exc.name or "").split(".")[0]
        if not module and "'" in detail:
            module = detail.split("'")[1].split(".")[0]
        pip = _PIP_NAMES.get(module, module)
        return (f"{what}: the Python package {module or '?'!r} is missing or broken ({detail}); "
                f"install it{f' (pip install {pip})' if pip else ''}")
    if _is_out_of_memory(exc):
        return f"{what}: not enough memory ({detail or type(exc).__name__})"
    return f"{what}: {type(exc).__name__}: {detail}"


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether `host` answers on the HTTPS port (asked only when weights must be downloaded)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load(spec: ModelSpec, visual_bf16: bool = False) -> tuple[Any, Any]:
    """Builds the model and its tokenizer.

    Every failure becomes a ModelUnavailableError whose one line names its cause: an unknown
    model or tag, a config open_clip cannot build, weights that are not cached and cannot be
    downloaded, a damaged checkpoint or one of another model, a missing package, memory.
    Process-wide settings (log levels) are changed only while it runs.
    """
    import logging

    name = spec.model_name
    try:
        with _quiet_loggers(logging.CRITICAL):
            import open_clip

            if _is_model_source(spec.name):  # a folder or hub model, converted once to open_clip's layout
                from cliptool.models.hf import prepare

                prepared = prepare(spec.name)
                open_clip.add_model_config(prepared.config)
                weights, preprocess = prepared.weights, prepared.preprocess
            else:
                _register_model(spec, open_clip)
                weights, preprocess = _weights_file(spec, open_clip)
            model = _build_with_weights(spec, weights, preprocess, visual_bf16)
            model.eval()
            try:
                tokenizer = open_clip.get_tokenizer(name)
            except Exception as exc:  # noqa: BLE001 - HF tokenizers download, and fail many ways
                raise ModelUnavailableError(_cause(exc, f"cannot build the tokenizer of {name}")) from None
        return model, tokenizer
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - an import, memory or library failure outside the steps above
        raise ModelUnavailableError(_cause(exc, f"cannot load model {name}")) from None


def _register_model(spec: ModelSpec, open_clip: Any) -> None:
    """Makes a config file's model known to open_clip; an unknown model name is an error."""
    cfg = spec.config_path
    if cfg is not None:
        _validate_config(cfg)
        open_clip.add_model_config(_with_absolute_text_tower(cfg))
    if spec.model_name not in open_clip.list_models():
        raise ModelUnavailableError(
            f"unknown model {spec.model_name!r}; see open_clip.list_models() or pass a config JSON")


def _weights_file(spec: ModelSpec, open_clip: Any) -> tuple[Path, dict[str, Any]]:
    """The local file of the spec's weights (downloaded first if a tag's weights are not in
    the cache) and the preprocessing the weights were trained with (a tag's, else none)."""
    ckpt = spec.checkpoint_path
    if ckpt is not None:
        if not ckpt.is_file():
            raise ModelUnavailableError(f"checkpoint file not found: {ckpt}")
        return ckpt, {}
    if spec.pretrained.startswith("hf-hub:"):  # open_clip weights in a hub repository, as a tag's
        hub = spec.pretrained[len("hf-hub:"):].strip("/")
        pcfg = {"url": "", "hf_hub": hub if hub.count("/") >= 2 else hub + "/"}
        return Path(_cached_weights(pcfg) or _download_weights(pcfg, spec.pretrained, open_clip)), {}
    name = spec.model_name
    tags = open_clip.list_pretrained_tags_by_model(name)
    if spec.pretrained not in tags:
        known = ", ".join(tags) or "none"
        raise ModelUnavailableError(
            f"no pretrained weights {spec.pretrained!r} for {name} (known tags: {known}; "
            "or pass a checkpoint file with --pretrained)"
        )
    pcfg = dict(open_clip.get_pretrained_cfg(name, spec.pretrained))
    label = f"{name}/{spec.pretrained}"
    path = _cached_weights(pcfg) or _download_weights(pcfg, label, open_clip)
    return Path(path), {k: v for k, v in pcfg.items() if k != "size"}  # as open_clip applies a tag's


_GET_FILE_ADVICE = "download them elsewhere and pass the file: --pretrained /path/to/open_clip_pytorch_model.bin"


def _hub_files(pcfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The HF hub repository of a tag and its file names in the order open_clip tries them
    (a .safetensors alternative first, when safetensors is installed)."""
    import importlib.util

    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(pcfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if importlib.util.find_spec("safetensors") is not None:
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _uses_hub(pcfg: dict[str, Any]) -> bool:
    from open_clip.pretrained import has_hf_hub

    return bool(pcfg.get("hf_hub")) and has_hf_hub()


def _cached_weights(pcfg: dict[str, Any]) -> str | None:
    """A tag's weights file when it is already on disk (no network), else None."""
    if pcfg.get("file"):
        return pcfg["file"] if os.path.isfile(pcfg["file"]) else None
    if _uses_hub(pcfg):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hub_files(pcfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = pcfg.get("url", "")
    if url and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
        from open_clip.pretrained import download_pretrained_from_url

        return download_pretrained_from_url(url)  # checks the file's checksum; downloads only if it is wrong
    return None


def _download_weights(pcfg: dict[str, Any], label: str, open_clip: Any) -> str:
    """Downloads a tag's weights; says in one line why that is not possible."""
    from urllib.parse import urlparse

    hub = _uses_hub(pcfg)
    if not hub and not pcfg.get("url"):
        raise ModelUnavailableError(f"pretrained weights {label} have no download source; {_GET_FILE_ADVICE}")
    if hub:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelUnavailableError(
                f"pretrained weights {label} are not in the local cache and HF_HUB_OFFLINE is set; {_GET_FILE_ADVICE}")
    host = "huggingface.co" if hub else (urlparse(pcfg["url"]).hostname or "")
    if not _hub_reachable(host):
        raise ModelUnavailableError(
            f"pretrained weights {label} are not in the local cache and {host} cannot be reached (no network?); "
            + _GET_FILE_ADVICE)
    try:
        path = open_clip.download_pretrained(pcfg)
    except Exception as exc:  # noqa: BLE001 - hub, HTTP and disk errors of many kinds
        raise ModelUnavailableError(_cause(exc, f"cannot download pretrained weights {label}")) from None
    if not path or not os.path.isfile(path):
        raise ModelUnavailableError(f"cannot download pretrained weights {label}; {_GET_FILE_ADVICE}")
    return path


def _build_with_weights(spec: ModelSpec, weights: Path, preprocess: dict[str, Any], visual_bf16: bool) -> Any:
    """The model with the weights of a local file, each failure said for what it is."""
    name = spec.model_name
    skeleton = _meta_skeleton(name, preprocess)
    model = _build(spec, preprocess) if skeleton is None else None  # the config's own errors first
    state = _read_state(weights)
    if skeleton is not None:
        model = _assign_plain(skeleton, state, visual_bf16) if state is not None else None
        if model is not None:
            return model
        del skeleton
        model = _build(spec, preprocess)
    del state  # open_clip's loader reads the file again; no second copy meanwhile
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except Exception as exc:  # noqa: BLE001 - key, shape and conversion errors of many kinds
        if isinstance(exc, ImportError) or _is_out_of_memory(exc):
            raise ModelUnavailableError(_cause(exc, f"cannot load {weights} into {name}")) from None
        raise ModelUnavailableError(
            f"checkpoint {weights} does not fit model {name} (weights of another model?): "
            f"{type(exc).__name__}: {_detail(exc)}") from None
    return model


def _meta_skeleton(name: str, preprocess: dict[str, Any]) -> Any | None:
    """The model built on the "meta" device (no memory, no random init), or None when the
    architecture cannot be built so (a real build then says what is wrong)."""
    import open_clip
    import torch

    try:
        with torch.device("meta"):
            return open_clip.create_model(name, pretrained=None, device="meta", pretrained_text=False,
                                          force_preprocess_cfg=preprocess)
    except Exception as exc:  # noqa: BLE001 - a bad config, or init code that needs real tensors
        if isinstance(exc, ImportError) or _is_out_of_memory(exc):
            raise
        return None


def _build(spec: ModelSpec, preprocess: dict[str, Any]) -> Any:
    """The model with random weights; a config open_clip cannot build is said to be that."""
    import open_clip

    try:
        return open_clip.create_model(spec.model_name, pretrained=None, pretrained_text=False,
                                      force_preprocess_cfg=preprocess)
    except Exception as exc:  # noqa: BLE001 - bad fields raise TypeError, ValueError, KeyError, ...
        if isinstance(exc, ImportError) or _is_out_of_memory(exc):
            raise ModelUnavailableError(_cause(exc, f"cannot build model {spec.model_name}")) from None
        source = f"config {spec.config_path}" if spec.config_path else "open_clip's built-in config"
        raise ModelUnavailableError(
            f"model {spec.model_name} cannot be built from its {source}: {type(exc).__name__}: {_detail(exc)}"
        ) from None


def _read_state(weights: Path) -> dict[str, Any] | None:
    """The state dict in a weights file (unwrapped as open_clip does), or None for formats
    left to open_clip's loader (.npz/.npy); a file that cannot be read is said to be damaged."""
    from open_clip.factory import load_state_dict

    if weights.suffix in (".npz", ".npy"):
        return None
    try:
        state = load_state_dict(str(weights))
    except Exception as exc:  # noqa: BLE001 - zip, pickle, safetensors and EOF errors
        if isinstance(exc, ImportError) or _is_out_of_memory(exc):
            raise ModelUnavailableError(_cause(exc, f"cannot read checkpoint {weights}")) from None
        raise ModelUnavailableError(
            f"cannot load checkpoint {weights}: the file is damaged, truncated or not a model checkpoint "
            f"({type(exc).__name__}: {_detail(exc, 160)})") from None
    return state if isinstance(state, dict) else None


def _assign_plain(skeleton: Any, state: dict[str, Any], visual_bf16: bool = False) -> Any | None:
    """The skeleton with `state`'s tensors as its parameters, without a throwaway copy.

    open_clip builds the model with random weights, then copies the loaded checkpoint in: two
    copies of every weight at the peak (about 1.2 GB for ViT-B-32) and seconds spent drawing
    random numbers. Here the loaded tensors become the meta-built model's parameters. Returns
    None whenever `state` is anything but exactly the model's keys and shapes (open_clip's
    loader handles those: prefixed keys, resized position embeddings, other layouts...).
    """
    import torch

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    expected = skeleton.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        return None
    for k, ref in expected.items():  # one tensor at a time: no second copy of the model
        dtype = torch.bfloat16 if visual_bf16 and k.startswith("visual.") and ref.is_floating_point() else ref.dtype
        state[k] = state[k].to(dtype)
    skeleton.load_state_dict(state, strict=True, assign=True)
    for module in skeleton.modules():  # buffers not saved in checkpoints (the causal text mask)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if bname != "attn_mask" or buf.dim() != 2 or buf.shape[0] != buf.shape[1]:
                return None
            mask = torch.empty(buf.shape, dtype=buf.dtype).fill_(float("-inf")).triu_(1)
            module.register_buffer(bname, mask, persistent=False)
    if any(t.is_meta for t in list(skeleton.parameters()) + list(skeleton.buffers())):
        return None
    return skeleton


def _load_plain_checkpoint(name: str, ckpt: Path, visual_bf16: bool = False) -> Any | None:
    """The fast path alone: the model with a checkpoint that is exactly its state dict, or
    None (see _assign_plain)."""
    skeleton = _meta_skeleton(name, {})
    if skeleton is None:
        return None
    try:
        state = _read_state(Path(ckpt))
    except ModelUnavailableError:
        return None
    return _assign_plain(skeleton, state, visual_bf16) if state is not None else None
