"""Stage 4: turn frames and cuts into scenes, and choose each scene's sample frames.

Works inside the single decode pass: it keeps a bounded set of candidate frames (undecoded to
RGB) for the scene still open, thins them as the scene grows, and when the scene closes picks
frames spread across it, away from the cut edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .decode import Frame

_CANDIDATE_BYTES = 256 << 20  # memory for held frames of the open scene


@dataclass
class ClosedScene:
    start_frame: int
    end_frame: int  # exclusive
    start_time: float
    end_time: float
    samples: list[Frame] = field(default_factory=list)


def sample_positions(start: int, end: int, count: int) -> list[int]:
    """`count` frame numbers spread evenly inside [start, end), away from both edges."""
    length = end - start
    count = max(1, min(count, length))
    return [start + int((i + 1) * length / (count + 1)) for i in range(count)]


class SceneCutter:
    """Feed frames with `add_frame` and detector cuts with `add_cuts`; both return closed scenes."""

    def __init__(self, max_scene_seconds: float, samples_per_scene: int, frame_bytes: int) -> None:
        self.max_scene_seconds = max_scene_seconds
        self.samples_per_scene = samples_per_scene
        self.max_candidates = max(2 * samples_per_scene, min(32, _CANDIDATE_BYTES // max(1, frame_bytes)))
        self._start_frame = 0
        self._start_time = 0.0
        self._times: dict[int, float] = {}
        self._candidates: list[Frame] = []
        self._stride = 1
        self._last: Frame | None = None

    def add_frame(self, frame: Frame) -> list[ClosedScene]:
        closed: list[ClosedScene] = []
        self._times[frame.index] = frame.time
        if self._last is None:
            self._start_time = frame.time
            self._start_frame = frame.index
        elif self.max_scene_seconds > 0 and frame.time - self._start_time >= self.max_scene_seconds:
            closed.append(self._close(frame.index))
        self._last = frame
        if (frame.index - self._start_frame) % self._stride == 0:
            self._candidates.append(frame)
            if len(self._candidates) > self.max_candidates:
                self._candidates = self._candidates[::2]
                self._stride *= 2
        return closed

    def add_cuts(self, cuts: list[int]) -> list[ClosedScene]:
        closed = []
        for cut in sorted(cuts):
            if self._last is not None and self._start_frame < cut <= self._last.index:
                closed.append(self._close(cut))
        return closed

    def finish(self, end_time: float) -> list[ClosedScene]:
        """Closes the last scene at the end of the video."""
        if self._last is None:
            return []
        scene = self._close(self._last.index + 1, end_time)
        self._last = None
        return [scene]

    def _close(self, cut: int, end_time: float | None = None) -> ClosedScene:
        if end_time is None:
            end_time = self._times[cut]
        held = [f for f in self._candidates if f.index < cut]
        wanted = sample_positions(self._start_frame, cut, self.samples_per_scene)
        chosen = {min(held, key=lambda f: abs(f.index - pos)).index for pos in wanted} if held else set()
        samples = [f for f in held if f.index in chosen]
        scene = ClosedScene(self._start_frame, cut, self._start_time, end_time, samples)
        self._candidates = [f for f in self._candidates if f.index >= cut]
        self._stride = 1
        self._start_frame = cut
        self._start_time = self._times.get(cut, end_time)
        self._times = {i: t for i, t in self._times.items() if i >= cut}
        return scene
