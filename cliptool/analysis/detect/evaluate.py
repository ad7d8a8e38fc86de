"""Cut accuracy and speed of each shot detector on the shared test videos with known cuts.

    python -m cliptool.analysis.detect.evaluate [--detectors content,transnetv2] [--videos bikes,fades] [--json]

Every detector runs the way `cliptool index` runs it: one sequential decode pass with
`VideoReader`, small frames from `detect_bgr` at the detector's `frame_size`, default threshold and
a minimum scene length of 15 frames. A found cut matches a true cut at most `TOLERANCE` frames
away (each true cut matches at most one found cut): precision, recall, F1. A second score,
"transitions", also counts the measured fades and dissolves of a video as true transitions,
matched by a found cut anywhere inside them (TransNetV2 marks the middle of a gradual
transition, PySceneDetect's content detector its first frame or nothing). `fps` counts the whole pass (decode, small
frames, detection) by the wall clock; `detect_fps` only the detector's own `push`/`flush` time;
`cpu_fps` the whole pass by this process's CPU time (all its threads), which other work on a
busy machine does not skew.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOLERANCE = 2  # frames
SHARED = Path(__file__).resolve().parents[4] / "shared" / "testdata" / "scenes"


@dataclass(frozen=True)
class GroundTruth:
    file: str
    cuts: tuple[int, ...]  # first frame of each new shot, 0-based decoded frame numbers
    detectors: tuple[str, ...]  # detectors worth evaluating on it
    note: str = ""
    # Gradual transitions (first, last frame), fades and dissolves, measured on the video; a
    # listed cut inside one of them stands for the whole transition in the "transitions" score.
    gradual: tuple[tuple[int, int], ...] = ()

    def transitions(self) -> list[tuple[int, int]]:
        """Every transition as a frame range: hard cuts as (c, c), gradual ones as measured."""
        hard = [(c, c) for c in self.cuts if not any(a <= c <= b for a, b in self.gradual)]
        return sorted(hard + list(self.gradual))


_DEFAULT = ("content", "adaptive", "transnetv2")
GROUND_TRUTH: dict[str, GroundTruth] = {
    "bikes": GroundTruth("bikes.mp4", (30, 76, 137, 187, 242), _DEFAULT, "hard cuts"),
    "testvideo": GroundTruth("testvideo.mp4", (30, 180, 394), _DEFAULT,
                             "hard cuts 30, 180; 394 is the first frame of a fade-in from black (394-423); "
                             "4 more fades/dissolves count only in the transitions score",
                             gradual=((211, 240), (331, 359), (394, 423), (528, 558), (664, 692))),
    "goldeneye": GroundTruth("goldeneye-vfr-drop3.mp4", (60, 140), _DEFAULT,
                             "variable frame rate; cuts at 3.754 s and 8.759 s"),
    "counter": GroundTruth("counter.mp4", (10, 20), _DEFAULT,
                           "colour changes at 10 and 20; 10 is closer than the 15-frame minimum "
                           "scene length to the start, so no detector at index settings reports it"),
    "fades": GroundTruth("fades.mp4", (84, 167), ("threshold",),
                         "a flat frame ramping black-white-black: scene boundaries at the black frames, "
                         "meaningful only for the threshold (fade-to-black) detector"),
}


def match_cuts(found: list[int], truth: list[int] | list[tuple[int, int]], tolerance: int = TOLERANCE) -> int:
    """How many true cuts (frames, or (first, last) ranges) have a found cut within `tolerance`
    frames of them (one-to-one, nearest first)."""
    spans = [(t, t) if isinstance(t, int) else (int(t[0]), int(t[1])) for t in truth]

    def gap(f: int, span: tuple[int, int]) -> int:
        return max(span[0] - f, f - span[1], 0)

    pairs = sorted((gap(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(spans)
                   if gap(f, t) <= tolerance)
    used_f: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_t)


def run_detector(name: str, path: Path, min_scene_len: int = 15, max_frames: int | None = None) -> dict[str, Any]:
    """Cuts of one detector on one video (its first `max_frames` frames) through cliptool's
    decode path, with timings."""
    from cliptool.media.decode import VideoReader, detect_bgr
    from cliptool.analysis.detect import make_detector

    detector = make_detector(name, None, min_scene_len)
    cuts: list[int] = []
    detect_s = 0.0
    frames = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    with VideoReader(path) as reader:
        size = detector.frame_size(max(2, reader.info.width), max(2, reader.info.height))
        for frame in reader.frames():
            if max_frames is not None and frames >= max_frames:
                break
            small = detect_bgr(frame.av_frame, size)
            t0 = time.perf_counter()
            cuts.extend(detector.push(frame.index, small))
            detect_s += time.perf_counter() - t0
            frames += 1
    t0 = time.perf_counter()
    cuts.extend(detector.flush())
    detect_s += time.perf_counter() - t0
    total_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    return {"cuts": sorted(set(cuts)), "frames": frames, "seconds": total_s, "detect_seconds": detect_s,
            "cpu_seconds": cpu_s}


def _prf(tp: int, n_found: int, n_true: int) -> tuple[float | None, float | None, float | None]:
    p = tp / n_found if n_found else (1.0 if n_true == 0 else None)
    r = tp / n_true if n_true else None
    f = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (0.0 if p == 0 or r == 0 else None)
    return p, r, f


def detector_rows(videos: list[str] | None = None, detectors: list[str] | None = None,
                  root: Path | None = None) -> list[dict[str, Any]]:
    """One row per (detector, video) plus one "all" row per detector (micro-averaged).

    `videos` are keys of GROUND_TRUTH (default: all of them whose file exists under `root`,
    ../shared/testdata/scenes by default); `detectors` limits the detectors (default: each
    video's own list). Rows: detector, video, frames, expected, found, tp, fp, fn, precision,
    recall, f1, transitions, t_precision, t_recall, t_f1, fps, detect_fps, cpu_fps, note.
    Videos that are absent are left out.
    """
    root = Path(root) if root is not None else SHARED
    names = list(videos) if videos is not None else list(GROUND_TRUTH)
    unknown = [v for v in names if v not in GROUND_TRUTH]
    if unknown:
        raise ValueError(f"unknown video {unknown[0]!r} (choose from {', '.join(GROUND_TRUTH)})")
    rows: list[dict[str, Any]] = []
    totals: dict[str, dict[str, float]] = {}
    for video in names:
        gt = GROUND_TRUTH[video]
        path = root / gt.file
        if not path.is_file():
            continue
        for det in gt.detectors:
            if detectors is not None and det not in detectors:
                continue
            res = run_detector(det, path)
            found, truth = res["cuts"], list(gt.cuts)
            tp = match_cuts(found, truth)
            p, r, f = _prf(tp, len(found), len(truth))
            transitions = gt.transitions()
            ttp = match_cuts(found, transitions)
            tp_, tr_, tf_ = _prf(ttp, len(found), len(transitions))
            rows.append({
                "detector": det, "video": video, "frames": res["frames"], "expected": truth, "found": found,
                "tp": tp, "fp": len(found) - tp, "fn": len(truth) - tp,
                "precision": _r(p), "recall": _r(r), "f1": _r(f),
                "transitions": len(transitions), "t_precision": _r(tp_), "t_recall": _r(tr_), "t_f1": _r(tf_),
                "fps": round(res["frames"] / res["seconds"], 1),
                "detect_fps": round(res["frames"] / max(res["detect_seconds"], 1e-9), 1),
                "cpu_fps": round(res["frames"] / max(res["cpu_seconds"], 1e-9), 1),
                "note": gt.note,
            })
            t = totals.setdefault(det, {"tp": 0, "found": 0, "true": 0, "frames": 0, "s": 0.0, "ds": 0.0,
                                        "ttp": 0, "ttrue": 0, "cpu": 0.0})
            t["cpu"] += res["cpu_seconds"]
            t["ttp"] += ttp
            t["ttrue"] += len(transitions)
            t["tp"] += tp
            t["found"] += len(found)
            t["true"] += len(truth)
            t["frames"] += res["frames"]
            t["s"] += res["seconds"]
            t["ds"] += res["detect_seconds"]
    for det, t in totals.items():
        p, r, f = _prf(int(t["tp"]), int(t["found"]), int(t["true"]))
        tp_, tr_, tf_ = _prf(int(t["ttp"]), int(t["found"]), int(t["ttrue"]))
        rows.append({
            "detector": det, "video": "all", "frames": int(t["frames"]), "expected": None, "found": None,
            "tp": int(t["tp"]), "fp": int(t["found"] - t["tp"]), "fn": int(t["true"] - t["tp"]),
            "precision": _r(p), "recall": _r(r), "f1": _r(f),
            "transitions": int(t["ttrue"]), "t_precision": _r(tp_), "t_recall": _r(tr_), "t_f1": _r(tf_),
            "fps": round(t["frames"] / t["s"], 1), "detect_fps": round(t["frames"] / max(t["ds"], 1e-9), 1),
            "cpu_fps": round(t["frames"] / max(t["cpu"], 1e-9), 1),
            "note": "micro-averaged over the videos above",
        })
    return rows


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'detector':<11} {'video':<10} {'P':>6} {'R':>6} {'F1':>6} {'tp':>3} {'fp':>3} {'fn':>3} " \
           f"{'tP':>6} {'tR':>6} {'tF1':>6} {'fps':>7} {'det fps':>8} {'cpu fps':>8}  found"
    lines = [head, "-" * len(head)]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for row in rows:
        found = "" if row["found"] is None else " ".join(map(str, row["found"]))
        lines.append(
            f"{row['detector']:<11} {row['video']:<10} {fmt(row['precision']):>6} {fmt(row['recall']):>6} "
            f"{fmt(row['f1']):>6} {row['tp']:>3} {row['fp']:>3} {row['fn']:>3} {fmt(row['t_precision']):>6} "
            f"{fmt(row['t_recall']):>6} {fmt(row['t_f1']):>6} {row['fps']:>7.1f} "
            f"{row['detect_fps']:>8.1f} {row['cpu_fps']:>8.1f}  {found}"
        )
    lines.append("P/R/F1: the listed cuts, 2-frame tolerance. tP/tR/tF1: every transition, a fade or "
                 "dissolve matched anywhere inside it (+-2 frames). fps: decode + detect, wall clock; "
                 "det fps: the detector alone; cpu fps: decode + detect per CPU-second of this process.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cut precision/recall/F1 (2-frame tolerance) and speed of each detector.")
    parser.add_argument("--videos", help=f"comma-separated, from: {', '.join(GROUND_TRUTH)}")
    parser.add_argument("--detectors", help="comma-separated detector names")
    parser.add_argument("--root", type=Path, help="folder of the videos [default: ../shared/testdata/scenes]")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    videos = args.videos.split(",") if args.videos else None
    detectors = args.detectors.split(",") if args.detectors else None
    try:
        rows = detector_rows(videos, detectors, args.root)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"no test videos found under {args.root or SHARED}", file=sys.stderr)
        return 3
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
