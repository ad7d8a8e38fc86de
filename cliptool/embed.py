"""Stage 5: CLIP embeddings of frames, photos and text with open_clip."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .errors import ModelUnavailableError

_HASH_CHUNK = 1 << 20


def _file_fingerprint(path: Path) -> str:
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
    """

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED

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
        return ModelSpec(name, str(ckpt.resolve()) if ckpt else self.pretrained)

    def identity(self) -> str:
        """A string that changes whenever the model's embeddings could change."""
        parts = [self.model_name]
        cfg = self.config_path
        if cfg is not None:
            parts.append("config:" + _file_fingerprint(cfg) if cfg.is_file() else "config:missing")
        ckpt = self.checkpoint_path
        if ckpt is not None:
            parts.append("file:" + (_file_fingerprint(ckpt) if ckpt.is_file() else "missing"))
        else:
            parts.append(self.pretrained)
        return "/".join(parts)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "pretrained": self.pretrained}


def preprocess_rgb(rgb: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """CLIP input from an RGB uint8 image: shortest side to `size`, centre crop, normalise.

    Returns a float32 array of shape (3, size, size). Used alike for video frames and photos.
    """
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = resized[top : top + size, left : left + size].astype(np.float32) * (1.0 / 255.0)
    return ((crop - mean) / std).transpose(2, 0, 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ClipModel:
    """An open_clip model on the CPU (or a given device), ready to embed images and text."""

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        self.spec = spec.resolved()
        self.device = device
        self._model, self._tokenizer = _load(self.spec, device)
        cfg = _preprocess_cfg(self._model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._mean = np.asarray(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=np.float32)
        self._std = np.asarray(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=np.float32)
        self.dim = int(self.encode_text([""]).shape[1])

    @property
    def torch_model(self) -> Any:
        return self._model

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_rgb(rgb, self.image_size, self._mean, self._std)

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, D) L2-normalised float32."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            feats = self._model.encode_image(x)
        return _normalise(feats.float().cpu().numpy())

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images of any size -> (N, D) L2-normalised vectors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_preprocessed(np.stack([self.preprocess(im) for im in images]))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self._tokenizer(texts).to(self.device)
            feats = self._model.encode_text(tokens)
        return _normalise(feats.float().cpu().numpy())


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def _load(spec: ModelSpec, device: str) -> tuple[Any, Any]:
    """Builds the model and tokenizer, turning every failure into one clear line."""
    import logging

    import open_clip

    logging.getLogger("open_clip").setLevel(logging.ERROR)
    cfg = spec.config_path
    if cfg is not None:
        if not cfg.is_file():
            raise ModelUnavailableError(f"model config not found: {cfg}")
        try:
            json.loads(cfg.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"model config {cfg} is not valid JSON ({exc})") from None
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
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except Exception as exc:  # open_clip raises many kinds; all mean the weights are unusable
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if ckpt is not None:
            raise ModelUnavailableError(f"cannot load checkpoint {ckpt} into {name}: {detail}") from None
        raise ModelUnavailableError(
            f"cannot obtain pretrained weights {name}/{spec.pretrained} ({detail}); when offline, "
            "download them elsewhere and pass the file: --pretrained /path/to/open_clip_model.bin"
        ) from None
    model.eval()
    return model, open_clip.get_tokenizer(name)
