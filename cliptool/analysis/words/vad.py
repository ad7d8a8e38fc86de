"""Where in an audio track someone may be speaking: a cheap voice activity detector, so that a
speech recogniser decodes only those stretches and silence, noise and music cost nothing.

Two measures on 10 ms frames, both numpy over the whole track (about 2 ms per minute of audio):

* energy: a frame is loud when it stands 9 dB over the track's noise floor (its 10th
  percentile) and over -50 dBFS;
* rhythm: speech comes in syllables, so in any second of it many frames are far quieter than
  that second's mean (the share of frames under half the running mean, over a 1 s window, is
  0.35-0.6 for speech, with or without music under it, and 0.02-0.12 for music on its own);
  a loud frame counts as voiced only where that share is 0.2 or more over both the second
  before it and the second after it.

Voiced frames make regions; gaps under 0.4 s are closed, regions under 0.25 s dropped, and
each is padded by 0.25 s (a recogniser needs a little silence around a word).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.01
FLOOR_DB = 9.0  # over the noise floor
ABS_DB = -50.0  # dBFS a frame must reach to be loud at all
LOW_SHARE = 0.2  # the least share of quiet frames in a second for it to be speech-like
MIN_GAP_S = 0.4
MIN_REGION_S = 0.25
PAD_S = 0.25


def frame_energy(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mean power of each 10 ms frame of float samples."""
    n = int(rate * FRAME_S)
    k = len(samples) // n
    if k == 0:
        return np.zeros(0, np.float32)
    frames = samples[: k * n].reshape(k, n).astype(np.float32)
    return (frames * frames).mean(axis=1)


def _moving_mean(x: np.ndarray, width: int) -> np.ndarray:
    if len(x) == 0:
        return x
    kernel = np.ones(width, np.float64) / width
    pad = width // 2
    padded = np.pad(x.astype(np.float64), (pad, width - 1 - pad), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def voiced_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    """A boolean per 10 ms frame: loud over the noise floor and in a speech-like second."""
    e = frame_energy(samples, rate)
    if len(e) == 0:
        return np.zeros(0, bool)
    db = 10 * np.log10(e + 1e-12)
    floor = float(np.percentile(db, 10))
    loud = (db > floor + FLOOR_DB) & (db > ABS_DB)
    window = int(round(1.0 / FRAME_S))
    low = (e < 0.5 * _moving_mean(e, window)).astype(np.float64)
    # the share over the second before a frame and over the second after it, both: music that
    # stops (or starts) is not taken for speech because silence fills half a window around it
    csum = np.concatenate([[0.0], np.cumsum(low)])
    idx = np.arange(len(e))
    before = (csum[idx + 1] - csum[np.maximum(0, idx + 1 - window)]) / np.minimum(idx + 1, window)
    after = (csum[np.minimum(len(e), idx + window)] - csum[idx]) / np.minimum(len(e) - idx, window)
    return loud & (np.minimum(before, after) >= LOW_SHARE)


def voiced_regions(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of `samples` (float mono) that may hold speech."""
    voiced = voiced_frames(samples, rate)
    if not voiced.any():
        return []
    edges = np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    regions: list[list[float]] = []
    for a, b in zip(starts * FRAME_S, ends * FRAME_S):
        if regions and a - regions[-1][1] < MIN_GAP_S:
            regions[-1][1] = b
        else:
            regions.append([a, b])
    total = len(samples) / rate
    out = []
    for a, b in regions:
        if b - a >= MIN_REGION_S:
            a, b = max(0.0, a - PAD_S), min(total, b + PAD_S)
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return [(round(float(a), 3), round(float(b), 3)) for a, b in out]
