"""What the image tower sees of a frame: moment recall over frame shapes and places, one index per
way of seeing (models.views), and what each costs to index.

Videos (toy world, data/toy_videos.write_framed): one 8 s shot each, in every frame shape of
FRAME_SHAPES (16:9, 21:9, 4:3, 1:1, 9:16), with a shape at each place of PLACES (centre, the
outer fifths of the long side, a corner) for D = 0.5, 1, 2 s. Found: the best moment of the
video's own index entries for the shape's caption has its best time inside the appearance (the
index holds other videos with the same captions, so this measures what the views see, not
which of several same-caption videos ranks first)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cliptool.bench.recall import TOY_MODEL, toy_videos
from cliptool.bench.tables import print_aligned

VIEW_MODES = ("centre", "tiles", "pad", "squeeze")
DURATIONS = (0.5, 1.0, 2.0)
SECONDS = 8.0
SLACK = 0.04


def _corpus(folder: Path, quick: bool) -> list[dict[str, Any]]:
    tv = toy_videos()
    import numpy as np

    photos = tv.toy_world.load_photos()
    rng = np.random.default_rng(3)
    captions = tv.toy_world.CAPTIONS
    out = []
    for frame in tv.FRAME_SHAPES:
        for place in tv.PLACES:
            for d in DURATIONS[1:2] if quick else DURATIONS:
                caption = captions[int(rng.integers(len(captions)))]
                start = round(float(rng.uniform(1.0, SECONDS - 1.0 - d)), 2)
                name = f"{frame.replace(':', 'x')}-{place.replace(' ', '-')}-{d:g}s.mp4"
                path = folder / name
                if not path.is_file():
                    tv.write_framed(path, frame, place, caption, start, start + d, SECONDS, seed=len(out) + 1,
                                    photos=photos)
                out.append({"path": path, "frame": frame, "place": place, "d": d, "caption": caption,
                            "start": start, "end": start + d})
    return out


def bench_views(out: Path, model_dir: Path = TOY_MODEL, quick: bool = False) -> dict[str, Any]:
    from cliptool.config import IndexOptions
    from cliptool.index.indexer import index_paths
    from cliptool.models.spec import ModelSpec
    from cliptool.search.searcher import Searcher
    from cliptool.store import video_id_for

    config, weights = model_dir / "config.json", model_dir / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        return {"skipped": f"no toy model at {model_dir}"}
    folder = out / "framed-videos"
    videos = _corpus(folder, quick)
    spec = ModelSpec(str(config), str(weights))
    result: dict[str, Any] = {"videos": len(videos), "seconds_each": SECONDS, "modes": {}}
    for mode in VIEW_MODES:
        index_dir = out / "work" / f"views-{mode}"
        if index_dir.exists():
            import shutil

            shutil.rmtree(index_dir)
        t0 = time.perf_counter()
        index_paths([folder], index_dir, spec, IndexOptions(views=mode), report=lambda m: None, progress=False)
        seconds = time.perf_counter() - t0
        searcher = Searcher(index_dir)
        found: dict[str, list[bool]] = {}
        for v in videos:
            hit = searcher.best_in_video(searcher.text_vector(v["caption"]), video_id_for(v["path"]))
            ok = hit is not None and v["start"] - SLACK <= hit.best_time <= v["end"] + SLACK
            for key in ("all", f"frame {v['frame']}", f"place {v['place']}", f"D {v['d']:g}"):
                found.setdefault(key, []).append(ok)
        result["modes"][mode] = {"index_s": seconds, "recall": {k: sum(x) / len(x) for k, x in found.items()}}
        print(f"bench:   views {mode}: {result['modes'][mode]['recall']['all']:.0%} in {seconds:.1f} s", file=sys.stderr)
    return result


def print_views(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"\nviews: skipped ({r['skipped']})")
        return
    modes = list(r["modes"])
    keys = list(r["modes"][modes[0]]["recall"])
    print(f"\nWhat the image tower sees of a frame ({r['videos']} toy videos of {r['seconds_each']:g} s; "
          "found: the best moment of its own video lies in the appearance)")
    table = [["", *modes]]
    for key in keys:
        table.append([key, *(f"{r['modes'][m]['recall'][key]:.0%}" for m in modes)])
    base = r["modes"].get("centre", {}).get("index_s") or 1.0
    table.append(["index time (s)", *(f"{r['modes'][m]['index_s']:.1f}" for m in modes)])
    table.append(["against centre", *(f"{r['modes'][m]['index_s'] / base:.2f}x" for m in modes)])
    print_aligned(table)


def bench_views_cost(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int,
                     modes: tuple[str, ...] = VIEW_MODES) -> dict[str, Any]:
    """Index time of each corpus file (ViT-B-32, int8, a new index each run) with each way of
    seeing, against bare decoding of the same file: the ways run one after another, `repeat`
    times over, so a change of load falls on all of them alike; medians."""
    from cliptool.bench.indexing import index_once
    from cliptool.bench.measure import bare_decode_pyav, median, video_facts

    rows: dict[str, Any] = {}
    for label, path in corpus.items():
        runs: dict[str, list[tuple[float, float]]] = {m: [] for m in ("decode", *modes)}
        for i in range(repeat):
            print(f"bench:   views cost {label}, round {i + 1}/{repeat}", file=sys.stderr)
            runs["decode"].append(bare_decode_pyav(path))
            for mode in modes:
                wall, _, cpu = index_once(path, ckpt, work, ["--views", mode])
                runs[mode].append((wall, cpu))
        decode = median([w for w, _ in runs["decode"]])
        rows[label] = {"duration": video_facts(path)["duration"], "decode_s": decode,
                       "decode_cpu_s": median([c for _, c in runs["decode"]]),
                       "modes": {m: {"index_s": median([w for w, _ in runs[m]]), "index_cpu_s": median([c for _, c in runs[m]]),
                                     "runs_s": [w for w, _ in runs[m]]} for m in modes}}
    return {"repeat": repeat, "files": rows}


def print_views_cost(r: dict[str, Any]) -> None:
    files = r["files"]
    modes = list(next(iter(files.values()))["modes"]) if files else []
    print(f"\nWhat each way of seeing costs to index (ViT-B-32 int8, a new index each run; medians of {r['repeat']}, "
          "the ways alternating)")
    table = [["file", "bare decode s", *(f"{m} s" for m in modes), *(f"{m} x decode" for m in modes)]]
    for label, row in files.items():
        table.append([f"{label} ({row['duration']:.0f} s)", f"{row['decode_s']:.1f}",
                      *(f"{row['modes'][m]['index_s']:.1f}" for m in modes),
                      *(f"{row['modes'][m]['index_s'] / row['decode_s']:.2f}" for m in modes)])
    print_aligned(table)
