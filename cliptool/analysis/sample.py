"""Stage 4: turn frames and cuts into scenes, and choose each scene's sample frames.

Works inside the single decode pass. A shot longer than ``max_scene_seconds`` is split into
windows of equal length, none longer than that. The split needs the shot's end, so the cutter
holds the open shot's frame times (8 bytes a frame) and a bounded set of candidate frames
(undecoded to RGB), thinned as the shot grows; sample frames are picked when windows close.
So that memory stays bounded on an endless shot, a shot longer than ``_HELD_WINDOWS`` windows
gives up a full-length window from its front whenever it grows past that; only its last stretch
(up to ``_HELD_WINDOWS`` windows) is then split equally.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cliptool.media.decode import Frame

if TYPE_CHECKING:
    from cliptool.store import SceneRecord

_CANDIDATE_BYTES = 256 << 20  # memory for held frames of the open shot
_HELD_WINDOWS = 2  # a long shot holds at most this many windows' worth of frames before splitting
_MAX_HELD = 32 * _HELD_WINDOWS  # at most this many held frames (today's density: 32 a window)
_TIME_EPS = 1e-6


@dataclass
class ClosedScene:
    start_frame: int
    end_frame: int  # exclusive
    start_time: float
    end_time: float
    samples: list[Frame] = field(default_factory=list)
    continues_shot: bool = False  # a window of a long shot after its first one (no cut before it)


def sample_positions(start: int, end: int, count: int) -> list[int]:
    """`count` frame numbers spread evenly inside [start, end), away from both edges."""
    length = end - start
    count = max(1, min(count, length))
    return [start + int((i + 1) * length / (count + 1)) for i in range(count)]


class ChangeSampler:
    """Picks extra sample frames where the picture changes: samples that follow the content.

    It looks at the small frames shot detection already makes: the whole frame, squeezed, as
    the default views see it (`whole`), or only its centre square, which is what the image
    tower sees with `--views centre`. Each is reduced to a 16x16 grid of cell averages (its
    signature). A frame is sampled when enough of the grid (`threshold`, a fraction of the
    cells; for the whole of a frame wider or taller than 3:2, times the square of 1.5 x its short
    side over its long side, so that a thing of a given size counts about as it does in a
    square) differs visibly (by more than `cell_delta` of 255 in a channel) from the signature
    of the last sample, at the same cell and at each of its neighbours (so what
    moved by less than a cell does not count), and then it becomes the reference. The rate is bounded:
    never within `min_gap` seconds of the last sample, and a token bucket allows on average
    one sample per `mean_gap` seconds, in bursts of up to `burst`; a strong change (`strong`
    times the threshold: something appeared, not a pan's drift) may borrow up to another burst,
    so a slow pan that used the tokens up does not hide the moment after it. A change over most of the
    picture (`global_change`: a cut, a flash, a whip pan) resets the reference without a
    sample: the new scene's own samples cover a cut. Static footage costs nothing; a short
    moment (something that appears and goes) gets a sample while it is on screen.
    """

    def __init__(self, threshold: float = 0.02, min_gap: float = 0.3, mean_gap: float = 5.0, burst: int = 4,
                 cell_delta: float = 25.0, global_change: float = 0.5, grid: int = 16, strong: float = 3.0,
                 whole: bool = True) -> None:
        self.grid = grid
        self.whole = whole
        self.strong = strong
        self.threshold = threshold
        self.min_gap = min_gap
        self.mean_gap = mean_gap
        self.burst = max(1, burst)
        self.cell_delta = cell_delta
        self.global_change = global_change
        self._ref: np.ndarray | None = None  # the reference signature moved by one cell each way: (9, grid, grid, ch)
        self._last = -math.inf
        self._tokens = float(self.burst)
        self._clock: float | None = None
        self.taken = 0

    def signature(self, small: np.ndarray) -> np.ndarray:
        import cv2

        if not self.whole:
            h, w = small.shape[:2]
            side = min(h, w)
            y, x = (h - side) // 2, (w - side) // 2
            small = small[y:y + side, x:x + side]
        return cv2.resize(small, (self.grid, self.grid), interpolation=cv2.INTER_AREA).astype(np.int16)

    def changed(self, sig: np.ndarray) -> float:
        """The fraction of cells that differ visibly from the reference cell at the same place
        and from each of its 8 neighbours: what moved by less than a cell (a slow pan, a shaky
        hand, a swaying branch) does not count; what appeared, went or changed colour does."""
        if self._ref is None:
            return 1.0
        best = np.abs(self._ref - sig).max(axis=3).min(axis=0)
        return float(np.count_nonzero(best > self.cell_delta)) / best.size

    def _set_reference(self, sig: np.ndarray) -> None:
        """Makes `sig` the reference, kept as its nine one-cell shifts (made once, compared with every frame)."""
        g = self.grid
        padded = np.pad(sig, ((1, 1), (1, 1), (0, 0)), mode="edge")
        self._ref = np.stack([padded[dy:dy + g, dx:dx + g] for dy in range(3) for dx in range(3)])

    def offer(self, time: float, small: np.ndarray) -> bool:
        """Called for each frame in decode order with its small BGR copy; sample it?"""
        h, w = small.shape[:2]
        # the whole of a wide or tall frame, squeezed into the grid: a thing of a given size
        # (against the short side) covers fewer cells, by the frame's aspect across the long side
        # and again as its outline fills fewer of them whole (frames up to 3:2 count as square: a
        # slow pan over a 4:3 frame would pass the lower bar)
        scale = min(1.0, 1.5 * min(h, w) / max(h, w, 1)) ** 2 if self.whole else 1.0
        return self.offer_signature(time, self.signature(small), scale)

    def offer_signature(self, time: float, sig: np.ndarray, scale: float = 1.0) -> bool:
        """`offer` for a signature made already; `scale` multiplies the threshold."""
        if self._clock is not None and self.mean_gap > 0:
            self._tokens = min(float(self.burst), self._tokens + max(0.0, time - self._clock) / self.mean_gap)
        self._clock = time
        if self._ref is None:
            self._set_reference(sig)
            return False
        change = self.changed(sig)
        if change >= self.global_change:
            self._set_reference(sig)
            return False
        # a strong change (something appeared) may borrow up to a burst's worth of tokens, paid
        # back by later refills: the long-run rate stays one per mean_gap
        threshold = self.threshold * scale
        floor = 1.0 - self.burst if change >= self.strong * threshold else 1.0
        if change < threshold or time - self._last < self.min_gap - _TIME_EPS or self._tokens < floor:
            return False
        self._set_reference(sig)
        self._last = time
        self._tokens -= 1.0  # (may go below zero: a strong change's loan)
        self.taken += 1
        return True


class SceneCutter:
    """Feed frames with `add_frame` and detector cuts with `add_cuts`; both return closed scenes."""

    def __init__(self, max_scene_seconds: float, samples_per_scene: int, frame_bytes: int,
                 extra_spacing: float = 0.75) -> None:
        self.max_scene_seconds = max_scene_seconds
        self.extra_spacing = extra_spacing  # a scene takes extra samples only if its own are sparser than this
        self.samples_per_scene = samples_per_scene
        self.max_candidates = max(2 * samples_per_scene * _HELD_WINDOWS,
                                  min(_MAX_HELD, _CANDIDATE_BYTES // max(1, frame_bytes)))
        self._start_frame = 0  # first frame of the open part of the shot
        self._times = array("d")  # times of frames start_frame, start_frame + 1, ...
        self._continues = False  # the open part follows a window of the same shot
        self._origin = 0  # first frame of the shot: candidates sit at multiples of the stride from it
        self._candidates: list[Frame] = []
        self._stride = 1
        self._last: Frame | None = None
        self._extra: list[Frame] = []  # extra samples of the open part (ChangeSampler's), held

    def add_extra(self, frame: Frame) -> None:
        """Adds an extra sample (a frame of the open part, already given to `add_frame`) to
        whatever scene ends up holding it. A scene whose own samples lie closer together than
        `extra_spacing` seconds (a short scene) has no use for extras and drops them."""
        self._extra.append(frame)

    def add_frame(self, frame: Frame) -> list[ClosedScene]:
        if self._last is None:
            self._start_frame = self._origin = frame.index
        self._times.append(frame.time)
        self._last = frame
        if (frame.index - self._origin) % self._stride == 0:
            self._candidates.append(frame)
            while len(self._candidates) > self.max_candidates:
                self._stride *= 2
                self._candidates = [f for f in self._candidates if (f.index - self._origin) % self._stride == 0]
        limit = self.max_scene_seconds * _HELD_WINDOWS
        if self.max_scene_seconds > 0 and frame.time - self._times[0] > limit + _TIME_EPS:
            return [self._give_up_front_window()]
        return []

    def add_cuts(self, cuts: list[int]) -> list[ClosedScene]:
        closed: list[ClosedScene] = []
        for cut in sorted(cuts):
            if self._last is not None and self._start_frame < cut <= self._last.index:
                closed += self._close_shot(cut, self._time_of(cut))
        return closed

    def finish(self, end_time: float) -> list[ClosedScene]:
        """Closes the last shot at the end of the video."""
        if self._last is None:
            return []
        scenes = self._close_shot(self._last.index + 1, end_time)
        self._last = None
        return scenes

    def _time_of(self, frame_index: int) -> float:
        return self._times[frame_index - self._start_frame]

    def _give_up_front_window(self) -> ClosedScene:
        """Closes a window of full length at the front of a shot that has grown too long."""
        start = self._times[0]
        offset = bisect.bisect_right(self._times, start + self.max_scene_seconds + _TIME_EPS) - 1
        cut = self._start_frame + max(1, offset)
        scene = self._window(self._start_frame, cut, start, self._time_of(cut))
        self._advance(cut)
        self._continues = True
        return scene

    def _close_shot(self, cut: int, end_time: float) -> list[ClosedScene]:
        """Closes the open part of the shot at `cut`, split into equal windows."""
        bounds = self._equal_split(cut, end_time)
        scenes = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            scenes.append(self._window(a, b, self._time_of(a), self._time_of(b) if b < cut else end_time))
            self._continues = True
        self._advance(cut)
        self._continues = False
        self._origin = cut
        self._stride = 1
        self._candidates = [f for f in self._candidates if f.index >= cut]
        return scenes

    def _equal_split(self, cut: int, end_time: float) -> list[int]:
        """Window bounds (frame numbers, from the open part's start to `cut`): the fewest equal
        windows none of which is longer than the limit."""
        start_time = self._times[0]
        length = end_time - start_time
        frames = cut - self._start_frame
        if self.max_scene_seconds <= 0 or length <= self.max_scene_seconds + _TIME_EPS:
            return [self._start_frame, cut]
        times = self._times[:frames]
        n = max(1, math.ceil(length / self.max_scene_seconds - _TIME_EPS))
        while True:
            inner = [self._start_frame + bisect.bisect_left(times, start_time + k * length / n - _TIME_EPS)
                     for k in range(1, n)]
            bounds = sorted({self._start_frame, *[b for b in inner if self._start_frame < b < cut], cut})
            ends = [times[b - self._start_frame] if b < cut else end_time for b in bounds[1:]]
            starts = [times[a - self._start_frame] for a in bounds[:-1]]
            if n >= frames or all(e - s <= self.max_scene_seconds + _TIME_EPS for s, e in zip(starts, ends)):
                return bounds
            n += 1

    def _window(self, start: int, end: int, start_time: float, end_time: float) -> ClosedScene:
        held = [f for f in self._candidates if start <= f.index < end]
        wanted = sample_positions(start, end, self.samples_per_scene)
        chosen = {min(held, key=lambda f: abs(f.index - pos)).index for pos in wanted} if held else set()
        samples = [f for f in held if f.index in chosen]
        spacing = (end_time - start_time) / (max(1, self.samples_per_scene) + 1)
        extra = [f for f in self._extra if start <= f.index < end and f.index not in chosen]
        if extra and spacing > self.extra_spacing:
            samples = sorted(samples + extra, key=lambda f: f.index)
        return ClosedScene(start, end, start_time, end_time, samples, self._continues)

    def _advance(self, cut: int) -> None:
        """Drops what the open part held before `cut`."""
        del self._times[: cut - self._start_frame]
        self._start_frame = cut
        self._candidates = [f for f in self._candidates if f.index >= cut]
        self._extra = [f for f in self._extra if f.index >= cut]


class KnownCutter:
    """Replays scenes known beforehand (an index's) with their recorded sample frames; the same
    interface as `SceneCutter`."""

    def __init__(self, scenes: list[SceneRecord]) -> None:
        self._scenes = sorted(scenes, key=lambda s: s.start_frame)
        self._next = 0
        self._held: list[Frame] = []
        self._wanted = set(self._scenes[0].sample_frames) if self._scenes else set()

    def add_frame(self, frame: Frame) -> list[ClosedScene]:
        closed = []
        while self._next < len(self._scenes) and frame.index >= self._scenes[self._next].end_frame:
            closed.append(self._close())
        if frame.index in self._wanted:
            self._held.append(frame)
        return closed

    def add_cuts(self, cuts: list[int]) -> list[ClosedScene]:
        return []

    def finish(self, end_time: float) -> list[ClosedScene]:
        closed = []
        while self._next < len(self._scenes):
            closed.append(self._close())
        return closed

    def _close(self) -> ClosedScene:
        s = self._scenes[self._next]
        samples = [f for f in self._held if s.start_frame <= f.index < s.end_frame]
        self._held = [f for f in self._held if f.index >= s.end_frame]
        self._next += 1
        if self._next < len(self._scenes):
            self._wanted = set(self._scenes[self._next].sample_frames)
        return ClosedScene(s.start_frame, s.end_frame, s.start_time, s.end_time, samples, s.continues_shot)
