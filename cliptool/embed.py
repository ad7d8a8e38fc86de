"""Stage 5: CLIP embeddings of frames, photos and text with open_clip."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED, cache_entry
from .errors import ModelUnavailableError, one_line
from .onnx_tower import is_cached

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

    `name` is an open_clip model name or the path of a model config JSON file;
    `pretrained` is an open_clip pretrained tag (downloaded once) or a local checkpoint file.
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
        return Path(self.name) if self.name.endswith(".json") else None

    @property
    def checkpoint_path(self) -> Path | None:
        p = Path(self.pretrained).expanduser()
        looks_like_path = os.sep in self.pretrained or p.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        return p if looks_like_path or p.is_file() else None

    @property
    def model_name(self) -> str:
        """The name open_clip knows the architecture by."""
        cfg = self.config_path
        return cfg.stem if cfg else self.name

    def resolved(self) -> ModelSpec:
        """The same spec with absolute paths, so it can be recorded and reused from anywhere."""
        name = str(self.config_path.resolve()) if self.config_path else self.name
        ckpt = self.checkpoint_path
        return ModelSpec(name, str(ckpt.resolve()) if ckpt else self.pretrained, self.precision)

    def identity(self) -> str:
        """A string that changes whenever the model's embeddings could change."""
        parts = [self.model_name]
        cfg = self.config_path
        if cfg is not None:
            parts.append("config:" + file_fingerprint(cfg) if cfg.is_file() else "config:missing")
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
        return ModelSpec(self.name, self.pretrained, precision)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "pretrained": self.pretrained, "precision": self.precision}


def preprocess_rgb(rgb: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """CLIP input from an RGB uint8 image: shortest side to `size`, centre crop, normalise.

    Returns a float32 array of shape (3, size, size). Used alike for video frames and photos.
    """
    import cv2

    from .decode import area_resize

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
    """An open_clip model on the CPU (or a given device), ready to embed images and text.

    With a local checkpoint file (or an int8 tower already cached) the model loads in a
    background thread, so a caller can start decoding at once; every method waits for the load
    and raises its error. Cheap checks (config file, model name, checkpoint file present) still
    fail here, at construction. At int8 the open_clip model itself is loaded only when needed:
    to export the tower the first time, or to encode text.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", precision: str | None = None,
                 background: bool | None = None, threads: int = 0) -> None:
        """`threads`: the int8 tower's threads (0: one per core); an indexer decoding beside it
        gives it fewer, since on 2 cores one thread does the same work with 20% less CPU."""
        import threading

        self.spec = spec.resolved()
        self.device = device
        self.precision = precision or self.spec.precision
        self.threads = threads
        if self.precision not in PRECISIONS:
            raise ModelUnavailableError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        self._lock = threading.Lock()
        self._open_clip_lock = threading.Lock()
        self._loaded = threading.Event()
        self._error: BaseException | None = None
        self._thread: Any = None
        self._model: Any = None
        self._tower: Any = None  # the OnnxImageTower at int8
        if "torch" not in sys.modules:
            # Idle OpenMP threads sleep instead of spinning: the decoder's threads need those
            # cores between batches (about 12% less CPU for an index run on 2 cores).
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        quick = _quick_check(self.spec)
        if background is None:
            background = quick or (self.precision == "int8" and is_cached(self.spec.identity()))
        if background:
            self._thread = threading.Thread(target=self._load_in_background, name="cliptool-model-load", daemon=True)
            self._thread.start()
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
            self._loaded.set()

    def _load_open_clip(self) -> None:
        import torch

        bf16 = torch.bfloat16 if self.precision == "bf16" else None
        self._model, self._tokenizer = _load(self.spec, self.device, bf16)
        if bf16 is not None:
            self._model.visual.to(bf16)  # no-op when loaded so
        cfg = _preprocess_cfg(self._model)
        size = cfg.get("size", 224)
        self._image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._mean = np.asarray(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=np.float32)
        self._std = np.asarray(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=np.float32)
        self._dim = int(self._encode_text([""]).shape[1])

    def _load_tower(self) -> None:
        from . import onnx_tower

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
                    f"cannot prepare the int8 image tower of {self.spec.model_name} ({one_line(exc)[:200]}); "
                    "use --precision bf16 or fp32"
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
        import sys

        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.0005))
        try:
            self._load()
        finally:
            sys.setswitchinterval(interval)

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
        self._wait()
        return self._image_size

    @property
    def dim(self) -> int:
        self._wait()
        return self._dim

    @property
    def torch_model(self) -> Any:
        self._need_open_clip()
        return self._model

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
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
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.precision == "bf16":
                x = x.to(torch.bfloat16)
            feats = self._model.encode_image(x)
        return _normalise(feats.float().cpu().numpy())

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images of any size -> (N, D) L2-normalised vectors."""
        self._wait()
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_preprocessed(np.stack([self.preprocess(im) for im in images]))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        self._need_open_clip()
        return self._encode_text(texts)

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            tokens = self._tokenizer(texts).to(self.device)
            feats = self._model.encode_text(tokens)
        return _normalise(feats.float().cpu().numpy())

    def export_text_encoder(self, index_dir: Path) -> bool:
        """Writes the text tower for torch-free search (textenc) into `index_dir`, once per model.

        Returns whether an export is in place. Waits for the model (and raises its load error).
        A text tower the numpy encoder does not cover is skipped: search then uses open_clip.
        """
        self._wait()
        index_dir = Path(index_dir)
        identity = self.spec.identity()
        if text_encoder_identity(index_dir) == identity:
            return True
        # Exported once per model into the user cache (text is fp32 at every precision), then
        # copied into each index, which stays whole if the cache is cleared.
        cached = cache_entry("text-towers", self.spec.with_precision("fp32").identity(), TEXTENC_CACHE_VERSION)
        from .textenc import META_FILE, copy_export, export_text_encoder

        if not (cached / META_FILE).is_file():
            self._need_open_clip()

            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                export_text_encoder(self._model, self.spec.model_name, cached, tokenizer=self._tokenizer)
            except NotImplementedError:
                return False
        copy_export(cached, index_dir / TEXTENC_DIR)
        marker = index_dir / TEXTENC_MARKER
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model_identity": identity}))
        os.replace(tmp, marker)
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


TEXTENC_CACHE_VERSION = 1
TEXTENC_DIR = "textenc"
TEXTENC_MARKER = "textenc-model.json"


def text_encoder_identity(index_dir: Path) -> str | None:
    """The model identity whose text tower is exported in `index_dir`, or None."""
    try:
        return json.loads((Path(index_dir) / TEXTENC_MARKER).read_text()).get("model_identity")
    except (OSError, ValueError, AttributeError):
        return None


def _validate_config(cfg: Path) -> None:
    """A model config JSON must exist and parse."""
    if not cfg.is_file():
        raise ModelUnavailableError(f"model config not found: {cfg}")
    try:
        json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"model config {cfg} is not valid JSON ({exc})") from None


def _quick_check(spec: ModelSpec) -> bool:
    """Checks a spec without importing open_clip; True when loading may go to the background
    (a local checkpoint file and a model open_clip is sure to know)."""
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

    found = importlib.util.find_spec("open_clip")
    locations = list(found.submodule_search_locations or []) if found else []
    return any((Path(loc) / "model_configs" / f"{spec.model_name}.json").is_file() for loc in locations)


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (offline mode set by the user counts as no)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load(spec: ModelSpec, device: str, visual_dtype: Any = None) -> tuple[Any, Any]:
    """Builds the model and tokenizer, turning every failure into one clear line."""
    import logging

    if spec.checkpoint_path is None and not _hub_reachable():
        # Cached weights still load; missing ones fail at once instead of after a minute of retries.
        os.environ["HF_HUB_OFFLINE"] = "1"
    import open_clip

    for name in ("open_clip", "huggingface_hub", "root", "timm"):
        logging.getLogger(None if name == "root" else name).setLevel(logging.CRITICAL)
    cfg = spec.config_path
    if cfg is not None:
        _validate_config(cfg)
        open_clip.add_model_config(cfg)
    name = spec.model_name
    if name not in open_clip.list_models():
        raise ModelUnavailableError(f"unknown model {name!r}; see open_clip.list_models() or pass a config JSON")
    ckpt = spec.checkpoint_path
    if ckpt is not None:
        if not ckpt.is_file():
            raise ModelUnavailableError(f"checkpoint file not found: {ckpt}")
        pretrained = str(ckpt)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if spec.pretrained not in tags:
            known = ", ".join(tags) or "none"
            raise ModelUnavailableError(
                f"no pretrained weights {spec.pretrained!r} for {name} (known tags: {known}; "
                "or pass a checkpoint file with --pretrained)"
            )
        pretrained = spec.pretrained
    try:
        model = _load_plain_checkpoint(name, ckpt, device, visual_dtype) if ckpt is not None else None
        if model is None:
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except Exception as exc:  # open_clip raises many kinds; all mean the weights are unusable
        detail = one_line(exc)[:200]
        if ckpt is not None:
            raise ModelUnavailableError(f"cannot load checkpoint {ckpt} into {name}: {detail}") from None
        raise ModelUnavailableError(
            f"cannot obtain pretrained weights {name}/{spec.pretrained} (not cached and no network?); "
            "download them elsewhere and pass the file: --pretrained /path/to/open_clip_pytorch_model.bin"
        ) from None
    model.eval()
    return model, open_clip.get_tokenizer(name)


def _load_plain_checkpoint(name: str, ckpt: Path, device: str, visual_dtype: Any = None) -> Any:
    """The model with a checkpoint that is exactly its state dict, without a throwaway copy.

    open_clip builds the model with random weights, then copies the loaded checkpoint in: two
    copies of every weight at the peak (about 1.2 GB for ViT-B-32) and seconds spent drawing
    random numbers. Here the model is built on the "meta" device (no memory, no init) and the
    loaded tensors become its parameters. Returns None whenever the file is anything but a
    plain state dict with exactly the model's keys and shapes (open_clip's loader handles
    those: wrapped or prefixed dicts, resized position embeddings, JIT archives...).
    """
    import torch
    import open_clip

    with torch.device("meta"):  # built first: it allocates nothing and draws no random numbers
        model = open_clip.create_model(name, pretrained=None, device="meta")
    try:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain torch file: open_clip decides
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        return None
    for k, ref in expected.items():  # one tensor at a time: no second copy of the model
        dtype = visual_dtype if visual_dtype is not None and k.startswith("visual.") and ref.is_floating_point() else ref.dtype
        state[k] = state[k].to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    for module in model.modules():  # buffers not saved in checkpoints (the causal text mask)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if bname != "attn_mask" or buf.dim() != 2 or buf.shape[0] != buf.shape[1]:
                return None
            mask = torch.empty(buf.shape, dtype=buf.dtype).fill_(float("-inf")).triu_(1)
            module.register_buffer(bname, mask, persistent=False)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        return None
    return model.to(device)
