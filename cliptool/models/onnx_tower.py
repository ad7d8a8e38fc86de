"""Stage 5 backend: the image tower as an int8 ONNX Runtime model, exported once per model.

The first time a model is used at int8 precision its open_clip image tower is exported to
ONNX and its weights quantised to int8 (ONNX Runtime dynamic quantisation: int8 weights,
activations quantised per batch; the patch-embedding convolution stays float32, as ONNX
Runtime's integer convolution is slower than its float one), then cached under the user's
cache directory, keyed by the model identity. Every later run loads only ONNX Runtime and that
file: no torch, no open_clip, a fraction of a second and ~150 MB instead of ~5 s and ~1.4 GB.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.config import cache_entry, publish_cache_entry, usable_cores

FORMAT = 3  # bump when the export changes, so old cache entries are not reused (3: reduce_range)
_MODEL_FILE = "image-int8.onnx"
_META_FILE = "meta.json"
_MIN_FREE_BYTES = 1 << 30


def cache_path(identity: str) -> Path:
    """Where the tower for a model identity is (or would be) cached."""
    return cache_entry("image-towers", identity, FORMAT)


def is_cached(identity: str) -> bool:
    """Whether the tower for a model identity is in the cache."""
    return (cache_path(identity) / _META_FILE).is_file()


class OnnxImageTower:
    """A cached int8 image tower, ready to embed preprocessed batches."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        """`threads`: ONNX Runtime's intra-op threads; 0 means one per usable core."""
        import onnxruntime as ort

        meta = json.loads((folder / _META_FILE).read_text())
        self.identity: str = meta["identity"]
        self.image_size = int(meta["image_size"])
        self.mean = np.asarray(meta["mean"], dtype=np.float32)
        self.std = np.asarray(meta["std"], dtype=np.float32)
        self.dim = int(meta["dim"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: the decoder needs those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(folder / _MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, D) float32, not normalised."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _remove_stale_temporaries(parent: Path, age: float = 3600.0) -> None:
    """Temporary folders left by an export that was killed (Ctrl-C exits at once)."""
    import time

    for entry in parent.glob(".*"):
        try:
            if entry.is_dir() and time.time() - entry.stat().st_mtime > age:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def load_cached(identity: str, threads: int = 0) -> OnnxImageTower | None:
    """The cached tower for `identity`, or None when there is none (or it is unreadable)."""
    folder = cache_path(identity)
    if not (folder / _META_FILE).is_file():
        return None
    try:
        tower = OnnxImageTower(folder, threads)
    except Exception:  # noqa: BLE001 - a damaged entry is exported again
        return None
    return tower if tower.identity == identity else None


def torch_to_onnx(module: Any, example: Any, path: Path, input_name: str, output_name: str,
                  dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Exports a torch module of one input and one output to an ONNX file (opset 17, TorchScript
    exporter), with its parameters made to require grad meanwhile: nn.MultiheadAttention then
    keeps to plain ops (its inference fast path, a fused kernel, has no ONNX export)."""
    import warnings

    import torch

    params = list(module.parameters())
    trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    finally:
        for p, flag in zip(params, trainable):
            p.requires_grad_(flag)


def export(visual: Any, identity: str, image_size: int, mean: np.ndarray, std: np.ndarray, dim: int,
           threads: int = 0) -> OnnxImageTower:
    """Exports an fp32 open_clip image tower, quantises it and caches it; returns it loaded.

    Written to a temporary folder beside the entry and renamed into place, so a crash or a
    second process never leaves a half-written entry behind.
    """
    import logging

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = cache_path(identity)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder.parent)
    if shutil.disk_usage(folder.parent).free < _MIN_FREE_BYTES:
        raise OSError(f"less than 1 GiB free in {folder.parent} for the int8 image tower")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fp32 = tmp / "image-fp32.onnx"
        dummy = torch.zeros((2, 3, image_size, image_size), dtype=torch.float32)
        torch_to_onnx(visual.float().eval(), dummy, fp32, "pixels", "features",
                      {"pixels": {0: "batch"}, "features": {0: "batch"}})
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING on the root logger
        try:
            # Matrix products only: ConvInteger (the patch embedding) took a fifth of the time.
            # reduce_range (7-bit weights): on AVX2 CPUs without VNNI the u8 x s8 products
            # saturate; a random ViT-B-32's min cosine to fp32 was 0.983 without, 0.9997 with.
            quantize_dynamic(str(fp32), str(tmp / _MODEL_FILE), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], reduce_range=True)
        finally:
            quiet.setLevel(level)
        fp32.unlink()
        meta = {"format": FORMAT, "identity": identity, "image_size": int(image_size),
                "mean": [float(x) for x in mean], "std": [float(x) for x in std], "dim": int(dim)}
        (tmp / _META_FILE).write_text(json.dumps(meta))
        publish_cache_entry(tmp, folder, _META_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OnnxImageTower(folder, threads)
