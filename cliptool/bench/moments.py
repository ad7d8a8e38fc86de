"""How long a hit is: the moment spans search gives on the toy videos (one 30 s shot, a shape on
screen for D seconds), for several values of searcher.MOMENT_DROP, against the truth.

For each appearance, the best moment of its own video for its caption: whether the span holds
the whole appearance (a frame's slack), whether its best time lies inside it, its length, and
its overlap with the truth (intersection over union)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cliptool.bench.recall import TOY_MODEL, toy_videos
from cliptool.bench.tables import print_aligned

DROPS = (0.02, 0.05, 0.1, 0.2)
SLACK = 0.04  # a frame at 25 fps


def bench_moments(out: Path, model_dir: Path = TOY_MODEL, per_duration: int = 8) -> dict[str, Any]:
    from cliptool.config import IndexOptions
    from cliptool.index.indexer import index_paths
    from cliptool.models.spec import ModelSpec
    from cliptool.search import searcher as searcher_module
    from cliptool.search.searcher import Searcher
    from cliptool.store import video_id_for

    config, weights = model_dir / "config.json", model_dir / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        return {"skipped": f"no toy model at {model_dir}"}
    sets = toy_videos().recall_corpus(out / "toy-videos", per_duration=per_duration, two_count=4)
    spec = ModelSpec(str(config), str(weights))
    rows: dict[str, dict[str, float]] = {}
    saved = searcher_module.MOMENT_DROP
    try:
        for key, videos in sets.items():
            folder = out / "toy-videos" / key
            index_dir = out / "work" / f"moments-{key}"
            index_paths([folder], index_dir, spec, IndexOptions(), report=lambda m: None, progress=False)
            searcher = Searcher(index_dir)
            for drop in DROPS:
                searcher_module.MOMENT_DROP = drop
                row = rows.setdefault(f"{key} drop {drop:g}", {"n": 0, "holds": 0, "best_in": 0, "length": 0.0,
                                                                "iou": 0.0})
                for v in videos:
                    for a in v.appearances:
                        hit = searcher.best_in_video(searcher.text_vector(a.caption), video_id_for(folder / v.name))
                        if hit is None:
                            continue
                        row["n"] += 1
                        row["holds"] += hit.start <= a.start + SLACK and hit.end >= a.end - SLACK
                        row["best_in"] += a.start - SLACK <= hit.best_time <= a.end + SLACK
                        row["length"] += hit.end - hit.start
                        inter = max(0.0, min(hit.end, a.end) - max(hit.start, a.start))
                        row["iou"] += inter / (max(hit.end, a.end) - min(hit.start, a.start))
            print(f"bench:   moments {key} done", file=sys.stderr)
    finally:
        searcher_module.MOMENT_DROP = saved
    return {"model": str(model_dir), "videos_per_set": per_duration, "drop_now": saved,
            "rows": {k: {"n": r["n"], "holds": r["holds"] / r["n"], "best_in": r["best_in"] / r["n"],
                         "length": r["length"] / r["n"], "iou": r["iou"] / r["n"]} for k, r in rows.items() if r["n"]}}


def print_moments(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"\nmoments: skipped ({r['skipped']})")
        return
    print(f"\nHow long a hit is (toy CLIP, {r['videos_per_set']} videos per D; the searcher's drop is "
          f"{r['drop_now']:g}): the best moment of each appearance's own video")
    table = [["set / drop", "n", "holds the appearance", "best time inside", "mean length (s)", "mean IoU"]]
    for key, row in r["rows"].items():
        table.append([key, str(row["n"]), f"{row['holds']:.0%}", f"{row['best_in']:.0%}", f"{row['length']:.2f}",
                      f"{row['iou']:.2f}"])
    print_aligned(table)
