"""Indexing on Ray: `cliptool index --ray` on a two-node cluster on this machine against a local run."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cliptool.bench.corpus import build_clip
from cliptool.bench.indexing import index_once
from cliptool.bench.measure import median, run_child, video_facts
from cliptool.bench.tables import print_aligned


def bench_ray(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """`cliptool index --ray` on a two-node Ray cluster on this machine (its CPUs split between
    the nodes) against a local run, alternately: each corpus file alone, then the corpus and
    a few short clips in one run. Fresh processes and indexes each time, medians."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'cliptool[cluster]')"}
    from cliptool.config import usable_cores

    shorts_dir = work / "ray-shorts"
    shorts_dir.mkdir(parents=True, exist_ok=True)
    seconds, count = (5, 4) if quick else (10, 8)
    short = build_clip(ckpt.parent / "corpus" / f"short-720p-{seconds}s.mp4", 1280, 720, seconds)
    shorts = []
    for i in range(count):  # copies: each a video of its own for the index
        shorts.append(shorts_dir / f"short-{i}.mp4")
        if not shorts[-1].is_file():
            shutil.copy2(short, shorts[-1])
    cpus = usable_cores()
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": max(1, cpus // 2), "include_dashboard": False})
    cluster.add_node(num_cpus=max(1, cpus - cpus // 2))
    started = time.perf_counter() - t0
    out: dict[str, Any] = {"nodes": 2, "cpus": cpus, "cluster_start_s": started, "rows": []}
    print(f"bench: Ray cluster of 2 nodes started in {started:.1f} s", file=sys.stderr)
    summary = work / "ray-summary.json"
    try:
        cases = [(label, [path]) for label, path in corpus.items()]
        cases.append((f"corpus + {count} x {seconds} s", [*corpus.values(), *shorts]))
        for label, paths in cases:
            local, ray, workers, scenes = [], [], [], 0
            for _ in range(repeat):
                local.append(index_once(paths, ckpt, work)[0])
                shutil.rmtree(work / "index", ignore_errors=True)
                wall, _, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(work / "index"),
                                           "index", *map(str, paths), "--model", "ViT-B-32", "--pretrained", str(ckpt),
                                           "--ray", cluster.address, "--json"], capture=summary)
                shutil.rmtree(work / "index", ignore_errors=True)
                ray.append(wall if code == 0 else float("nan"))
                if code == 0:
                    facts = json.loads(summary.read_text())
                    workers.append(facts["workers"])
                    scenes = facts["scenes"]
            duration = sum(video_facts(p)["duration"] for p in paths)
            row = {"case": label, "videos": len(paths), "duration": duration, "local_s": median(local),
                   "ray_s": median(ray), "local_runs_s": local, "ray_runs_s": ray, "workers": max(workers, default=0), "scenes": scenes}
            row["overhead_s"] = row["ray_s"] - row["local_s"]
            row["overhead_per_video_s"] = row["overhead_s"] / len(paths)
            row["ray_realtime_x"] = duration / row["ray_s"]
            row["local_realtime_x"] = duration / row["local_s"]
            out["rows"].append(row)
            print(f"bench:   {label}: local {row['local_s']:.1f} s, Ray {row['ray_s']:.1f} s "
                  f"({row['workers']} workers)", file=sys.stderr)
    finally:
        cluster.shutdown()
    return out


def print_ray(r: dict[str, Any]) -> None:
    if "rows" not in r:
        print(f"\nindex on Ray: {r.get('skipped')}")
        return
    print(f"\nindex on Ray: a {r['nodes']}-node cluster on this machine ({r['cpus']} CPUs split between them; "
          f"started in {r['cluster_start_s']:.1f} s, not counted) against a local run; fresh processes, medians")
    head = ("case", "videos", "length", "local s", "Ray s", "overhead s", "per video s", "local x rt", "Ray x rt",
            "workers")
    rows = [head] + [(x["case"], x["videos"], f"{x['duration']:.0f} s", f"{x['local_s']:.1f}", f"{x['ray_s']:.1f}",
                      f"{x['overhead_s']:+.1f}", f"{x['overhead_per_video_s']:+.2f}", f"{x['local_realtime_x']:.1f}",
                      f"{x['ray_realtime_x']:.1f}", x["workers"]) for x in r["rows"]]
    print_aligned(rows)
