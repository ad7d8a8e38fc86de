"""Keyframes' selection on a long video stays bounded: 2 hours of candidates (3 a second) in a
child process under 1 GB of peak memory, and --count auto still finds the true number of
clusters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cliptool.analysis.keyframes import Candidate, KeyframeOptions, Scene, select_keyframes
from cliptool.analysis.quality import FrameQuality


def make(n: int, clusters: int, per_shot: int = 30, dim: int = 512, noise: float = 0.3,
         seed: int = 0) -> tuple[list[Candidate], list[Scene]]:
    """Candidates of synthetic shots (`per_shot` candidates each: 10 s at 3 a second), each shot
    showing one of `clusters` pictures with noise; and the shots as scenes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    shots = n // per_shot
    picture = rng.permutation(np.arange(shots) % clusters)
    vectors = centres[np.repeat(picture, per_shot)] + rng.normal(scale=noise, size=(n, dim)).astype(np.float32)
    sharp = rng.uniform(450, 550, n)
    cands = []
    for i in range(n):
        c = Candidate(i * 10, i / 3, FrameQuality(100.0, 40.0, 5.0, 250.0, 0.1, float(sharp[i])))
        c.scene = c.shot = i // per_shot
        c.vector = vectors[i]
        cands.append(c)
    scenes = [Scene(s, s * 300, s * 300 + 300, s * 10.0, s * 10.0 + 10.0) for s in range(shots)]
    return cands, scenes


_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from test_keyframes_long import make
from cliptool.analysis.keyframes import KeyframeOptions, select_keyframes

cands, scenes = make(int(sys.argv[1]), 8)
t0 = time.perf_counter()
distinct = select_keyframes(cands, [], scenes, KeyframeOptions(chapters=True))
auto = select_keyframes(cands, [], scenes, KeyframeOptions(auto_count=True, chapters=True))
# VmHWM, the peak of this process's own memory: ru_maxrss keeps the parent's peak across fork + exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t0, "kept": len(distinct.kept), "count": auto.manifest["count"],
                  "peak_mb": hwm / 1024}))
"""


def test_two_hours_of_candidates_select_in_bounded_memory() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(2 * 3600 * 3), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["peak_mb"] < 1024, got
    assert got["kept"] == 8 and got["count"] == 8, got  # repeats folded; auto finds the 8 pictures


def test_count_auto_picks_the_true_number_of_clean_clusters() -> None:
    for clusters, keep_repeats in [(6, False), (6, True), (3, True), (11, False)]:
        cands, scenes = make(60 * 30, clusters)
        options = KeyframeOptions(auto_count=True, min_count=2, max_count=16, keep_repeats=keep_repeats)
        sel = select_keyframes(cands, [], scenes, options)
        assert sel.manifest["count"] == clusters, (clusters, keep_repeats, sel.manifest["count_chosen_by"])
        assert len(sel.kept) == clusters


def test_fixed_count_never_crosses_a_cut_when_there_are_fewer_shots() -> None:
    cands, scenes = make(600, 4)
    sel = select_keyframes(cands, [], scenes, KeyframeOptions(count=30, keep_repeats=True))
    assert sel.manifest["count"] == 30 and len(sel.kept) == 30
    shots_of: dict[int, set[int]] = {}
    for c in sel.candidates:
        shots_of.setdefault(c.detail["cluster"], set()).add(c.shot)
    assert all(len(shots) == 1 for shots in shots_of.values())  # 30 clusters over 20 shots
