"""Indexing speed: `cliptool index` on each corpus file and on the whole corpus against bare
decoding, a per-frame scan and detect-then-seek (the seeds' approaches); a full run's main table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from cliptool.bench.measure import LAST_CPU, bare_decode_ffmpeg, bare_decode_pyav, median, run_child, video_facts
from cliptool.bench.tables import cell, print_aligned

_BASELINE = r"""
import sys, time, json
t0 = time.perf_counter()
import av, torch, open_clip
from PIL import Image
mode, path, ckpt, arg = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt)
model.eval()
load = time.perf_counter() - t0

def embed(frame):
    with torch.inference_mode():
        x = preprocess(frame.to_image()).unsqueeze(0)          # PIL path, one frame at a time
        v = model.encode_image(x)
        return (v / v.norm(dim=-1, keepdim=True))[0].numpy()

if mode == "scan":  # every frame through the model, one at a time; a prefix of `arg` frames
    t1 = time.perf_counter(); n = 0
    with av.open(path) as c:
        for frame in c.decode(video=0):
            embed(frame); n += 1
            if n >= arg:
                break
    per_frame = (time.perf_counter() - t1) / n
    print(json.dumps({"load": load, "per_frame": per_frame, "frames": n}))
else:  # detect-then-seek: a full PySceneDetect pass, then seek to 3 frames per scene
    from scenedetect import ContentDetector, detect
    t1 = time.perf_counter()
    scenes = detect(path, ContentDetector())
    t_detect = time.perf_counter() - t1
    with av.open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate)
        if not scenes:
            total = s.frames or int(float(s.duration * s.time_base) * fps)
            spans = [(0, total)]
        else:
            spans = [(a.frame_num, b.frame_num) for a, b in scenes]
        n = 0
        for start, end in spans:
            for i in range(3):
                target = start + (i + 1) * (end - start) // 4
                t = target / fps
                c.seek(int(t / s.time_base) + (s.start_time or 0), stream=s, backward=True)
                for frame in c.decode(s):
                    if frame.time is not None and frame.time >= t - 0.5 / fps:
                        embed(frame); n += 1
                        break
    print(json.dumps({"load": load, "detect": t_detect, "scenes": len(spans), "embedded": n,
                      "total": time.perf_counter() - t0}))
"""


def run_baseline(mode: str, path: Path, ckpt: Path, arg: float = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", _BASELINE, mode, str(path), str(ckpt), str(arg)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        print(f"bench: baseline {mode} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def index_once(paths: Path | list[Path], ckpt: Path, work: Path, extra: list[str] | None = None) -> tuple[float, int, float]:
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    files = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    wall, rss, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "index", *files,
                                 "--model", "ViT-B-32", "--pretrained", str(ckpt), *(extra or [])])
    return (wall if code == 0 else float("nan")), rss, LAST_CPU[0]


def bench_indexing(corpus: dict[str, Path], ckpt: Path, work: Path, repeat: int, quick: bool,
                   results: dict[str, object], out: Path) -> list[dict[str, Any]]:
    """Each file of the corpus, then the corpus in one run: index time against bare decoding,
    a per-frame scan and a seek baseline."""
    rows: list[dict[str, Any]] = []
    for label, path in corpus.items():
        facts = video_facts(path)
        print(f"bench: {label} {path.name} ({facts['duration']:.0f} s, {facts['mbps']:.1f} Mbps)", file=sys.stderr)
        decodes = [bare_decode_pyav(path) for _ in range(repeat)]
        decode = median([d[0] for d in decodes])
        decode_cpu = median([d[1] for d in decodes])
        ff = [x for x in (bare_decode_ffmpeg(path) for _ in range(repeat)) if x is not None]
        runs = [index_once(path, ckpt, work) for _ in range(repeat)]
        wall = median([r[0] for r in runs])
        rss = max(r[1] for r in runs)
        cpu = median([r[2] for r in runs])
        prefix = 20 if quick else 60
        scan = run_baseline("scan", path, ckpt, prefix)
        seek = run_baseline("seek", path, ckpt)
        scan_total = scan.get("load", 0) + scan.get("per_frame", float("nan")) * facts["frames"] if scan else float("nan")
        row = {
            "file": label, "path": str(path), **facts,
            "bare_decode_pyav_s": decode, "bare_decode_fps": facts["frames"] / decode,
            "bare_decode_ffmpeg_s": median(ff) if ff else None,
            "index_s": wall, "index_runs_s": [r[0] for r in runs], "index_peak_rss_mb": rss,
            "bare_decode_cpu_s": decode_cpu, "index_cpu_s": cpu, "cpu_ratio_to_decode": cpu / decode_cpu,
            "realtime_x": facts["duration"] / wall, "ratio_to_decode": wall / decode,
            "scan_s_extrapolated": scan_total, "scan_prefix_frames": scan.get("frames"),
            "scan_per_frame_s": scan.get("per_frame"), "x_vs_scan": scan_total / wall,
            "seek_s": seek.get("total", float("nan")), "seek_scenes": seek.get("scenes"),
            "x_vs_seek": seek.get("total", float("nan")) / wall,
        }
        rows.append(row)
        results["index"] = rows
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
        print(f"bench:   index {wall:.1f} s, decode {decode:.1f} s, scan {scan_total:.0f} s (extrapolated), "
              f"seek {row['seek_s']:.1f} s", file=sys.stderr)
    # The corpus as one run: start-up paid once, as when indexing a folder.
    runs = [index_once(list(corpus.values()), ckpt, work) for _ in range(repeat)]
    total = {k: sum(r[k] for r in rows) for k in ("duration", "bare_decode_pyav_s", "bare_decode_cpu_s", "scan_s_extrapolated", "seek_s")}
    wall = median([r[0] for r in runs])
    rows.append({
        "file": "corpus", "duration": total["duration"], "mbps": float("nan"), "frames": sum(r["frames"] for r in rows),
        "bare_decode_pyav_s": total["bare_decode_pyav_s"], "bare_decode_fps": float("nan"), "bare_decode_ffmpeg_s": None,
        "index_s": wall, "index_runs_s": [r[0] for r in runs], "index_peak_rss_mb": max(r[1] for r in runs),
        "bare_decode_cpu_s": total["bare_decode_cpu_s"], "index_cpu_s": median([r[2] for r in runs]),
        "cpu_ratio_to_decode": median([r[2] for r in runs]) / total["bare_decode_cpu_s"],
        "realtime_x": total["duration"] / wall, "ratio_to_decode": wall / total["bare_decode_pyav_s"],
        "x_vs_scan": total["scan_s_extrapolated"] / wall, "x_vs_seek": total["seek_s"] / wall,
    })
    return rows


def print_table(r: dict) -> None:
    print(f"\ncliptool bench ({'quick' if r['quick'] else 'full'}; medians of {r['repeat']} runs; "
          f"{r['cpus']} CPUs; ViT-B-32, default settings)")
    head = ("file", "length", "Mbps", "decode s", "dec fps", "ffmpeg s", "index s", "x realtime",
            "/decode", "CPU /decode", "x vs scan", "x vs seek", "peak RSS MB")
    rows = [head]
    for x in r["index"]:
        rows.append((x["file"], cell(x["duration"], "{:.0f} s"), cell(x["mbps"]), cell(x["bare_decode_pyav_s"]),
                     cell(x["bare_decode_fps"], "{:.0f}"), cell(x["bare_decode_ffmpeg_s"]), cell(x["index_s"]),
                     cell(x["realtime_x"]), cell(x["ratio_to_decode"], "{:.2f}"),
                     cell(x["cpu_ratio_to_decode"], "{:.2f}"), cell(x["x_vs_scan"], "{:.0f}"),
                     cell(x["x_vs_seek"]), cell(x["index_peak_rss_mb"], "{:.0f}")))
    print_aligned(rows)
    s = r["search"]
    p = r["precision"]
    print(f"\nscan = per-frame scan extrapolated from a prefix of {r['index'][0].get('scan_prefix_frames')} frames "
          f"(+ its model load); seek = full PySceneDetect pass + seek to 3 frames/scene, one at a time")
    print("corpus = both files in one `cliptool index` run; its decode, scan and seek are the sums of the files'")
    first = r.get("first_run", {})
    print(f"first run with a model ({first.get('file')}; exports the int8 image tower and the text encoder): "
          f"{cell(first.get('index_s'))} s, peak RSS {first.get('peak_rss_mb')} MB")
    print(f"index with --precision fp32 ({r['index_fp32_s']['file']}): {cell(r['index_fp32_s']['index_s'])} s")
    print(f"search, {s['scenes']} scenes: cold `cliptool search` {cell(s['cold_s'], '{:.2f}')} s; warm query "
          f"{cell(s['query_ms'])} ms (text {cell(s['text_ms'])} ms + search {cell(s['search_ms'])} ms; "
          f"text path: {s.get('text_path')})")
    print(f"cache rebuild, {s['scenes']} scenes: {cell(s['rebuild_s'])} s, peak RSS {s['rebuild_peak_rss_mb']} MB "
          f"(vectors {s['vectors_mb']:.0f} MB)")
    v = r.get("serve") or {}
    if v:
        print(f"cliptool serve, {s['scenes']} scenes: /api/search {cell(v.get('query_ms'))} ms median "
              f"(p95 {cell(v.get('query_p95_ms'))} ms), query to rendered page {cell(v.get('page_ms'), '{:.0f}')} ms, "
              f"{cell(v.get('rss_mb'), '{:.0f}')} MB after {v.get('queries')} queries")
    print(f"cliptool --help: {cell(r['help_s'], '{:.2f}')} s")
    print(f"image tower on {p['fp32']['frames']} real frames (random-weight ViT-B-32, batch 16): "
          f"fp32 {p['fp32']['img_s']:.1f} img/s")
    for name in ("int8", "bf16"):
        q = p[name]
        print(f"  {name}: {q['img_s']:.1f} img/s; cosine to fp32 min {q['cos_min']:.4f}, median {q['cos_median']:.4f}; "
              f"top-10 overlap mean {q['top10_overlap_mean']:.2f}, min {q['top10_overlap_min']:.2f}; "
              f"finds its own fp32 frame first {q['self_top1']:.0%}")
    if r.get("detectors"):
        det = r["detectors"]
        keys = list(det[0].keys())
        print("\nshot detectors")
        table = [keys] + [[cell(d.get(k), "{:.3f}") if isinstance(d.get(k), float) else str(d.get(k)) for k in keys]
                          for d in det]
        print_aligned(table)
    elif r.get("detectors_error"):
        print(f"\nshot detectors: {r['detectors_error']}")
    print(f"\nbench took {r['bench_seconds']:.0f} s")
