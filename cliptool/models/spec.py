"""Which CLIP model and weights to use (`ModelSpec`), and its identity."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cliptool.config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from cliptool.errors import ModelUnavailableError
from cliptool.models.common import file_fingerprint

PRECISIONS = ("int8", "bf16", "fp32")
DEFAULT_PRECISION = "int8"

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
        if cfg is None and is_model_source(self.name):
            from cliptool.models.hf import registry_name

            return registry_name(self.name)
        return cfg.stem if cfg else self.name

    def check_files(self) -> ModelSpec:
        """The spec itself, once the files it names exist (a config JSON, a checkpoint file);
        ModelUnavailableError "no such file" naming the option and the path otherwise."""
        for option, path in (("--model", self.config_path), ("--pretrained", self.checkpoint_path)):
            if path is not None and not path.expanduser().is_file():
                raise ModelUnavailableError(f"{option}: no such file: {path}")
        return self

    def resolved(self) -> ModelSpec:
        """The same spec with absolute paths, so it can be recorded and reused from anywhere."""
        if is_model_source(self.name):  # a folder or hub model: its weights come with it
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
        if is_model_source(self.name):  # a folder's file fingerprints, a hub repository's name
            from cliptool.models.hf import source_identity

            return "/".join([source_identity(self.name)] + ([self.precision] if self.precision != "fp32" else []))
        parts = [self.model_name]
        cfg = self.config_path
        if cfg is not None:
            parts.append("config:" + file_fingerprint(cfg) if cfg.is_file() else "config:missing")
            text_files = text_tower_files(cfg)
            if text_files:  # a local Hugging Face text tower: its config and tokenizer count too
                parts.append("text:" + files_fingerprint(text_files))
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


def text_tower_files(cfg: Path) -> tuple[Path, ...]:
    from cliptool.models.hf import config_text_tower

    return config_text_tower(cfg)[1]


def files_fingerprint(files: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(f"\0{path.parent.name}/{path.name}\0{file_fingerprint(path)}".encode())
    return h.hexdigest()[:16]


def is_model_source(name: str) -> bool:
    """Whether a model name is a model folder or an hf-hub: repository (see hf_models)."""
    from cliptool.models.hf import is_model_source

    return is_model_source(name)
