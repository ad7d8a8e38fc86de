"""Big collections: synthetic CLIP-like indexes of N scenes written through the store's API
(`python -m cliptool.bench synth-index`), and their build, add, search and memory figures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.bench.corpus import REPO, build_clip
from cliptool.bench.measure import LAST_CPU, baseline_code, median, run_child, vmhwm_mb

SYNTH_ROOT = "/synthetic"  # where the synthetic videos "are": no such folder, so no index run prunes them


def synthetic_scene_vectors(rng: np.random.Generator, centres: np.ndarray, n: int, frames: int,
                            theme: int) -> tuple[np.ndarray, np.ndarray]:
    """(scene vectors (n, D), frame vectors (n, frames, D)) that look like CLIP's: unit vectors
    around cluster centres that share a common direction (CLIP's embeddings sit in a narrow
    cone), most scenes of a video near its theme cluster, each frame near its scene's
    direction, and the scene vector the normalised mean of its frames, as indexing makes it."""
    dim = centres.shape[1]
    pick = np.where(rng.random(n) < 0.6, theme, rng.integers(len(centres), size=n))
    direction = centres[pick] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    f = direction[:, None, :] + 0.3 * rng.standard_normal((n, frames, dim), dtype=np.float32) / np.sqrt(dim)
    f /= np.linalg.norm(f, axis=2, keepdims=True)
    scene = f.mean(axis=1)
    scene /= np.linalg.norm(scene, axis=1, keepdims=True)
    return scene.astype(np.float32), f.astype(np.float32)


def synthetic_centres(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((count, dim)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centres = 0.7 * common + own
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def write_synthetic(index_dir: Path, scenes: int, dim: int, identity: str, spec: dict[str, str], *,
                    per_video: int = 250, frames: int = 3, seed: int = 0, name: str = "synth",
                    progress: bool = True, batch_scenes: int = 20_000) -> dict[str, Any]:
    """Writes `scenes` synthetic scenes (videos of `per_video` scenes) into the index at
    `index_dir` through the store's commit protocol (IndexStore.put_videos: one commit per
    `batch_scenes` scenes' worth of videos), under the writer lock; records the model as an index run does (`identity`, `spec`);
    then brings the search cache in line (appends the new videos, or builds it)."""
    from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord, WriterLock, video_id_for
    from cliptool.vectors.faiss import sync_cache

    index_dir = Path(index_dir)
    rng = np.random.default_rng(seed)
    centres = synthetic_centres(rng, max(64, scenes // 200), dim)
    t0 = time.perf_counter()
    videos = (scenes + per_video - 1) // per_video
    with WriterLock(index_dir):
        with IndexStore(index_dir, create=True) as store:
            store.bind_model(identity, spec)
            store.recover()  # as an index run starts: stores.clean is written when all went through
            done = committed = 0
            batch: list[Any] = []
            for v in range(videos):
                n = min(per_video, scenes - done)
                scene_vecs, frame_vecs = synthetic_scene_vectors(rng, centres, n, frames, int(rng.integers(len(centres))))
                lengths = rng.uniform(2.0, 10.0, size=n)
                ends = np.cumsum(lengths)
                starts = ends - lengths
                recs = []
                for i in range(n):
                    s, e = float(starts[i]), float(ends[i])
                    times = [round(s + (e - s) * (j + 1) / (frames + 1), 3) for j in range(frames)]
                    recs.append(SceneRecord(i, round(s, 3), round(e, 3), int(s * 30), int(e * 30), times,
                                            [int(t * 30) for t in times]))
                path = f"{SYNTH_ROOT}/{name}/video-{v:07d}.mp4"
                vid = video_id_for(path)
                record = VideoRecord(vid, path, n, 0.0, f"synthetic-{seed}-{v}", float(ends[-1]), 30.0, 1920, 1080,
                                     int(ends[-1] * 30), n, "h264", identity, time.time(), "")
                batch.append((record, recs, [SceneVectors(scene_vecs[i], frame_vecs[i]) for i in range(n)]))
                done += n
                if done - committed >= batch_scenes or done == scenes:  # one commit per batch of videos
                    store.put_videos(batch)
                    batch, committed = [], done
                if progress and (v + 1) % max(1, videos // 20) == 0:
                    print(f"synth-index: {done} / {scenes} scenes ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    stored_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sync = sync_cache(index_dir, report=(lambda m: print(m, file=sys.stderr)) if progress else None)
    return {"scenes": scenes, "videos": videos, "store_s": stored_s, "cache_s": time.perf_counter() - t1,
            "cache_rebuilt": sync.rebuilt, "cache_added_rows": sync.added_rows}


def synth_index_main(argv: list[str]) -> int:
    """`python -m cliptool.bench synth-index DIR --scenes N --model M --pretrained P`."""
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec
    from cliptool.index.indexer import resolve_model_spec

    ap = argparse.ArgumentParser(prog="python -m cliptool.bench synth-index",
                                 description="Builds a synthetic index of N scenes through the store's own API, "
                                             "recording the given model as `cliptool index` does, so that real "
                                             "videos can be added to it and it can be searched by text and image.")
    ap.add_argument("dir", type=Path, help="the index directory (created, or added to)")
    ap.add_argument("--scenes", type=int, required=True)
    ap.add_argument("--model", required=True, help="open_clip model name or config JSON, as for `cliptool index`")
    ap.add_argument("--pretrained", required=True, help="pretrained tag or checkpoint file, as for `cliptool index`")
    ap.add_argument("--precision", default=None, help="image tower precision, as for `cliptool index` [int8]")
    ap.add_argument("--scenes-per-video", type=int, default=250)
    ap.add_argument("--frames", type=int, default=3, help="sample-frame vectors per scene [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="folder name of the synthetic videos [synth-SEED]")
    args = ap.parse_args(argv)
    if args.scenes < 1 or args.scenes_per_video < 1 or args.frames < 1:
        ap.error("--scenes, --scenes-per-video and --frames must be at least 1")
    spec = resolve_model_spec(args.dir, ModelSpec(args.model, args.pretrained))
    if args.precision:
        spec = ModelSpec(spec.name, spec.pretrained, args.precision)
    model = ClipModel(spec)
    identity = spec.identity()
    out = write_synthetic(args.dir, args.scenes, model.dim, identity, spec.to_dict(), per_video=args.scenes_per_video,
                          frames=args.frames, seed=args.seed, name=args.name or f"synth-{args.seed}")
    t0 = time.perf_counter()
    model.export_text_encoder(args.dir)  # the numpy text tower, for fast text search (as `index` does)
    out["text_export_s"] = time.perf_counter() - t0
    print(json.dumps(out))
    return 0


SCALE_QUERIES = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
                 "snow on mountains", "a cat", "fireworks over a city skyline"]
SCALE_FILTER_S = 1500.0  # the filter measured at scale: --min-duration 25m, about half the synthetic videos
_VMHWM_RUNNER = ("import atexit, re, runpy, sys\n"
                 "def hwm():\n"
                 "    kb = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
                 "    sys.stderr.write(f'\\nbench-vmhwm-kb {kb}\\n')\n"
                 "atexit.register(hwm)\n"
                 "sys.path.insert(0, sys.argv[1])\n"  # the cliptool measured (-c also puts the current folder first)
                 "sys.argv = ['cliptool'] + sys.argv[2:]\n"
                 "runpy.run_module('cliptool', run_name='__main__')\n")
# warm_scale in a new process, with the cliptool in argv[3] (this one when empty), from the module
# that holds it in that cliptool (cliptool/bench.py before the bench became a folder of modules).
_WARM_SCALE = """
import importlib, json, sys
if sys.argv[3]:
    sys.path.insert(0, sys.argv[3])
for name in ("cliptool.bench.scale", "cliptool.bench.main", "cliptool.bench"):
    try:
        warm_scale = importlib.import_module(name).warm_scale
        break
    except (ImportError, AttributeError):
        pass
print(json.dumps(warm_scale(sys.argv[1], int(sys.argv[2]))))
"""


def scale_index(out: Path, ckpt: Path, scenes: int) -> tuple[Path, dict[str, Any]]:
    """The synthetic index of `scenes` scenes (built once with `synth-index` in a new process,
    its build time and peak RSS kept beside it in bench-synth.json)."""
    index_dir = out / f"scale-{scenes}"
    done = index_dir / "bench-synth.json"
    if done.is_file():
        return index_dir, json.loads(done.read_text())
    shutil.rmtree(index_dir, ignore_errors=True)
    capture = out / f"synth-{scenes}.out"
    print(f"bench: synth-index of {scenes} scenes", file=sys.stderr)
    wall, rss, code = run_child([sys.executable, "-m", "cliptool.bench", "synth-index", str(index_dir), "--scenes",
                                 str(scenes), "--model", "ViT-B-32", "--pretrained", str(ckpt)], capture=capture)
    if code != 0:
        raise SystemExit(f"bench: synth-index of {scenes} scenes failed")
    info = json.loads(capture.read_text().strip().splitlines()[-1])
    info.update(build_s=wall, build_peak_rss_mb=rss)
    done.write_text(json.dumps(info))
    return index_dir, info


def search_process(index_dir: Path, *args: str, code: Path | None = None) -> tuple[float, float]:
    """(wall seconds, VmHWM in MB) of one `cliptool search` in a new process, with the cliptool
    in `code` (an earlier commit's, see baseline_code) or this one. CPU seconds (user + system)
    are kept in LAST_CPU[0]."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPTOOL_INDEX_DIR": str(index_dir)}
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.run([sys.executable, "-c", _VMHWM_RUNNER, str(code or REPO), "search", *args],
                          capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    after = os.times()
    LAST_CPU[0] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if proc.returncode != 0:
        print(f"bench: search {' '.join(args)} exited {proc.returncode}: {proc.stderr[-1500:]}", file=sys.stderr)
    found = [line for line in proc.stderr.splitlines() if line.startswith("bench-vmhwm-kb ")]
    return wall, (int(found[-1].split()[1]) / 1024 if found else float("nan"))


def _exact_top(index: Any, queries: np.ndarray, k: int) -> list[set[int]]:
    """The exact top-k rows of each query over every live row (each segment's flat scan)."""
    from cliptool.vectors.faiss import LiveIndex

    segments = index.segments if isinstance(index, LiveIndex) else [index]
    offsets = index.offsets if isinstance(index, LiveIndex) else [0]
    scores, rows = [], []
    for seg, off in zip(segments, offsets):
        s, r = seg.faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        scores.append(s)
        rows.append(r + int(off))
    s, r = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
    best = np.argsort(-s, axis=1)[:, :k]
    return [set(r[i][best[i]].tolist()) for i in range(len(queries))]


def warm_scale(index_dir: Path, repeat: int) -> dict[str, Any]:
    """In one process, as a searcher that lives on: warm text query latency (text encoding
    included), plain and --videos; recall@10 of the scene search against the exact scan on
    query-like vectors; the float16 error of the stored vectors; this process's VmHWM."""
    from cliptool.search import searcher as search_module
    from cliptool.search.searcher import Searcher
    from cliptool.vectors.faiss import sample_queries

    searcher = Searcher(index_dir, text_runtime="onnxruntime")
    searcher.search(searcher.text_vector("warm up"), top=10)
    searcher.search(searcher.text_vector("warm up"), top=10)
    searcher.search(searcher.text_vector("warm up"), top=10, by_video=True)
    out: dict[str, Any] = {}
    cases = [("plain", {}, repeat), ("videos", {"by_video": True}, repeat)]
    if "Filters" in dir(search_module):  # a cliptool with filters (this one; not every baseline)
        cases.append(("filter", {"where": search_module.Filters(min_duration=SCALE_FILTER_S)}, repeat))
    for label, options, rounds in cases:
        text_ms, total_ms = [], []
        for _ in range(rounds):
            for q in SCALE_QUERIES:
                t0 = time.perf_counter()
                v = searcher.text_vector(q)
                t1 = time.perf_counter()
                searcher.search(v, top=10, **options)
                t2 = time.perf_counter()
                text_ms.append((t1 - t0) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
        out[label] = {"query_ms": median(total_ms), "text_ms": median(text_ms), "runs": len(total_ms),
                      "vmhwm_mb": vmhwm_mb()}  # after these queries (before the measures below)
    index = searcher.vectors
    base = index.segments[0] if hasattr(index, "segments") else index
    queries = sample_queries(base.vectors_view(), 200, seed=12345)
    exact = _exact_top(index, queries, 10)
    found = sum(len(set(index.scores(q, 10)[1].tolist()) & want) for q, want in zip(queries, exact))
    out["recall_at_10"] = found / (10 * len(queries))
    out["describe"] = index.describe()
    sample = np.asarray(base.vectors_view()[: min(base.size, 100_000)], dtype=np.float32)
    half = sample.astype(np.float16).astype(np.float32)
    cos = np.sum(sample * half, axis=1) / np.linalg.norm(half, axis=1)
    score_err = np.abs((sample - half) @ queries[:20].T)
    out["float16"] = {"max_cosine_error": float(1 - cos.min()), "max_score_error": float(score_err.max())}
    return out


def add_one_video(index_dir: Path, clip: Path, work: Path, ckpt: Path, repeat: int, fresh: bool) -> list[float]:
    """Wall seconds of `cliptool index` adding one copy of `clip` (a new file each run) to
    `index_dir`, or, with fresh, to a new empty index each run."""
    times = []
    for i in range(repeat):
        target = work / f"scale-empty-{i}" if fresh else index_dir
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        copy = work / "scale-adds" / f"{index_dir.name}-{'fresh' if fresh else 'big'}-{i}-{time.time_ns()}.mp4"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(clip, copy)
        wall, _, code = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(target), "index", str(copy),
                                   "--model", "ViT-B-32", "--pretrained", str(ckpt)])
        if code == 0:
            times.append(wall)
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
    return times


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_scale(out: Path, ckpt: Path, sizes: list[int], repeat: int,
                baseline_commit: str | None = None) -> list[dict[str, Any]]:
    """For each size: build time, add-one-video time (empty index vs this one), cold and warm
    query latency (plain, --videos and a filter), recall@10, peak memory (VmHWM) and disk size.
    With `baseline_commit`, the searches also with that commit's cliptool, alternately in this
    run (its figures under "before")."""
    os.environ.setdefault("CLIPTOOL_CACHE_DIR", str(out / "cache"))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    clip = build_clip(out / "corpus" / "loop-720p-60s.mp4", 1280, 720, 60)
    add_one_video(out / "scale-warmup", clip, work, ckpt, 1, fresh=True)  # exports the int8 tower once
    codes: dict[str, Path | None] = {"now": None}
    old = baseline_code(out, baseline_commit) if baseline_commit else None
    if old is not None:
        codes[f"before ({baseline_commit})"] = old
    filter_args = ("--min-duration", f"{SCALE_FILTER_S:.0f}")
    rows = []
    for scenes in sizes:
        index_dir, built = scale_index(out, ckpt, scenes)
        print(f"bench: scale {scenes}: searches", file=sys.stderr)
        search_process(index_dir, "warm the page cache", "--top", "10")
        searches: dict[str, dict[str, Any]] = {}
        cold: dict[str, dict[str, list[tuple[float, float, float]]]] = {
            v: {"plain": [], "videos": [], "filter": []} for v in codes}
        for i in range(repeat):  # each kind of search alternately with each cliptool: the same load
            for kind, extra in (("plain", ()), ("videos", ("--videos",)), ("filter", filter_args)):
                for version, code in codes.items():
                    wall, hwm = search_process(index_dir, SCALE_QUERIES[i % len(SCALE_QUERIES)], "--top", "10",
                                               *extra, code=code)
                    cold[version][kind].append((wall, LAST_CPU[0], hwm))
        for version, code in codes.items():
            warm_out = work / f"scale-warm-{scenes}.json"
            run_child([sys.executable, "-c", _WARM_SCALE, str(index_dir), str(repeat), str(code or "")], capture=warm_out)
            try:
                warm = json.loads(warm_out.read_text())
            except (OSError, ValueError):
                warm = {}
            runs = cold[version]
            searches[version] = {
                "warm": warm,
                **{f"cold{'' if kind == 'plain' else '_' + kind}_s": median([r[0] for r in runs[kind]]) for kind in runs},
                **{f"cold{'' if kind == 'plain' else '_' + kind}_cpu_s": median([r[1] for r in runs[kind]])
                   for kind in runs},
                **{f"cold{'' if kind == 'plain' else '_' + kind}_vmhwm_mb": max(r[2] for r in runs[kind]) for kind in runs},
                "cold_runs_s": {kind: [r[0] for r in runs[kind]] for kind in runs}}
        print(f"bench: scale {scenes}: adding one 1-minute video", file=sys.stderr)
        empty = add_one_video(index_dir, clip, work, ckpt, repeat, fresh=True)
        big = add_one_video(index_dir, clip, work, ckpt, repeat, fresh=False)
        row = {"scenes": scenes, "build": built, **searches["now"],
               "before": {v: r for v, r in searches.items() if v != "now"},
               "add_empty_s": median(empty), "add_big_s": median(big),
               "add_ratio": median(big) / median(empty) if empty and big else float("nan"),
               "add_runs": {"empty": empty, "big": big}, "disk_bytes": _du(index_dir),
               "disk": {p.name: _du(p) for p in index_dir.iterdir() if p.is_dir()},
               "load_average": os.getloadavg()}
        rows.append(row)
        (out / "bench-scale.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def print_scale(rows: list[dict[str, Any]]) -> None:
    def ms(w: dict[str, Any], label: str, key: str = "query_ms") -> str:
        return f"{(w.get(label) or {}).get(key, float('nan')):.1f}"

    print("\nbig collections (synthetic CLIP-like vectors, ViT-B-32 text tower; medians; cold: new process, "
          f"wall s (CPU s); filter: --min-duration {SCALE_FILTER_S:.0f})")
    head = ("scenes", "cliptool", "build s", "add 1 min: empty / this", "ratio", "cold s", "cold --videos s",
            "cold filter s", "warm ms (text ms)", "warm --videos ms", "warm filter ms", "recall@10", "index",
            "VmHWM MB (cold / --videos / warm)", "disk GB")
    print(" | ".join(head))
    for r in rows:
        for version, x in [("now", r), *r.get("before", {}).items()]:
            w = x.get("warm") or {}
            d = w.get("describe") or {}
            kind = d.get("kind", "?") if d.get("kind") != "approximate" else f"{d.get('factory')} nprobe {d.get('nprobe')}"
            now = version == "now"
            print(" | ".join([
                str(r["scenes"]), version, f"{r['build'].get('build_s', float('nan')):.0f}" if now else "",
                f"{r['add_empty_s']:.1f} / {r['add_big_s']:.1f}" if now else "", f"{r['add_ratio']:.2f}" if now else "",
                f"{x['cold_s']:.2f} ({x.get('cold_cpu_s', float('nan')):.2f})",
                f"{x.get('cold_videos_s', float('nan')):.2f} ({x.get('cold_videos_cpu_s', float('nan')):.2f})",
                f"{x.get('cold_filter_s', float('nan')):.2f} ({x.get('cold_filter_cpu_s', float('nan')):.2f})",
                f"{ms(w, 'plain')} ({ms(w, 'plain', 'text_ms')})", ms(w, "videos"), ms(w, "filter"),
                f"{w.get('recall_at_10', float('nan')):.3f}", kind,
                f"{x['cold_vmhwm_mb']:.0f} / {x.get('cold_videos_vmhwm_mb', float('nan')):.0f} / "
                f"{(w.get('plain') or {}).get('vmhwm_mb', float('nan')):.0f}",
                f"{r['disk_bytes'] / 1e9:.1f}" if now else ""]))
    for r in rows:
        f16 = (r.get("warm") or {}).get("float16")
        if f16:
            print(f"float16 storage at {r['scenes']}: max cosine error {f16['max_cosine_error']:.2e}, "
                  f"max score error {f16['max_score_error']:.2e} (measured, not used)")
