"""Search on a synthetic index: cold `cliptool search`, a warm query and a cache rebuild, and warm
query latency with filters and --videos against the code paths they replace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.bench.corpus import REPO
from cliptool.bench.measure import median, run_child

def build_search_index(out: Path, ckpt: Path, scenes: int, model: str = "ViT-B-32", label: str = "") -> Path:
    """An index of `scenes` random unit vectors written through the store API (cached), with
    the model's text encoder exported as `cliptool index` does."""
    from cliptool.models.spec import ModelSpec
    from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord
    from cliptool.vectors.faiss import load_vector_index

    index_dir = out / (f"search-{label}-{scenes}" if label else f"search-{scenes}")
    done = index_dir / "bench-complete"
    if done.is_file():
        return index_dir
    shutil.rmtree(index_dir, ignore_errors=True)
    spec = ModelSpec(model, str(ckpt)).resolved()
    rng = np.random.default_rng(0)
    per_video, dim = 1000, 512
    with IndexStore(index_dir, create=True) as store:
        store.bind_model(spec.identity(), spec.to_dict())
        for v in range(scenes // per_video):
            vid = f"{v:016x}"
            frames = rng.standard_normal((per_video, 3, dim), dtype=np.float32)
            frames /= np.linalg.norm(frames, axis=2, keepdims=True)
            mean = frames.mean(axis=1)
            mean /= np.linalg.norm(mean, axis=1, keepdims=True)
            recs = [SceneRecord(i, i * 10.0, i * 10.0 + 10, i * 300, i * 300 + 300,
                                [i * 10 + 2.5, i * 10 + 5.0, i * 10 + 7.5], [i * 300 + 75, i * 300 + 150, i * 300 + 225])
                    for i in range(per_video)]
            vecs = [SceneVectors(mean[i], frames[i]) for i in range(per_video)]
            record = VideoRecord(vid, f"/videos/synthetic-{v:04d}.mp4", 1, 0.0, vid, per_video * 10.0, 30.0, 1920,
                                 1080, per_video * 300, per_video, "h264", spec.identity(), time.time(), "")
            store.put_video(record, recs, vecs)
    load_vector_index(index_dir)  # builds the cache
    export_text(REPO, model, ckpt, index_dir)
    done.write_text("ok")
    return index_dir


def export_text(code: Path, model: str, ckpt: Path, index_dir: Path) -> None:
    """Exports the model's text tower into the index with the cliptool in `code` (this one, or an
    older one the text bench compares with), in a new process, as `cliptool index` does."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from cliptool.models.clip import ClipModel; from cliptool.models.spec import ModelSpec; "
              "ClipModel(ModelSpec(sys.argv[2], sys.argv[3])).export_text_encoder(sys.argv[4])")
    subprocess.run([sys.executable, "-c", script, str(code), model, str(ckpt), str(index_dir)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def warm_search(index_dir: Path, repeat: int) -> dict[str, float]:
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir, text_runtime="onnxruntime")
    queries = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
               "snow on mountains", "a cat", "fireworks over a city skyline"]
    searcher.search(searcher.text_vector("warm up"), top=10)
    text_ms, search_ms, total_ms = [], [], []
    for _ in range(repeat):
        for q in queries:
            t0 = time.perf_counter()
            v = searcher.text_vector(q)
            t1 = time.perf_counter()
            searcher.search(v, top=10)
            t2 = time.perf_counter()
            text_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
    encoder = searcher.exported_text_encoder()
    return {"text_ms": median(text_ms), "search_ms": median(search_ms), "query_ms": median(total_ms),
            "exported_text_encoder": encoder is not None,
            "text_path": "open_clip" if encoder is None else f"{type(encoder).__name__} ({encoder.runtime})"}


def bench_search(out: Path, ckpt: Path, work: Path, n_scenes: int, repeat: int) -> dict[str, Any]:
    """Cold `cliptool search` (new process), a warm query and a cache rebuild on a synthetic index."""
    sdir = build_search_index(out, ckpt, n_scenes)
    cold = []
    for _ in range(max(3, repeat + 2)):
        wall, rss, _ = run_child([sys.executable, "-m", "cliptool", "--index-dir", str(sdir), "search",
                                  "a dog running on a beach", "--top", "10"])
        cold.append(wall)
    rb_wall, rb_rss, _ = run_child([sys.executable, "-c", "import sys; from cliptool.vectors.faiss import rebuild; "
                                    "rebuild(sys.argv[1])", str(sdir)])
    vec_mb = n_scenes * 4 * 512 * 4 / 2**20  # scene + 3 frame vectors
    warm_out = work / "warm.json"
    run_child([sys.executable, "-c", "import sys, json; from cliptool.bench.search import warm_search; "
               "print(json.dumps(warm_search(sys.argv[1], int(sys.argv[2]))))", str(sdir), str(repeat)],
              capture=warm_out)
    try:
        warm = json.loads(warm_out.read_text())
    except (OSError, ValueError):
        warm = {}
    return {"scenes": n_scenes, "cold_s": median(cold), "cold_runs_s": cold,
            **warm, "rebuild_s": rb_wall, "rebuild_peak_rss_mb": rb_rss, "vectors_mb": vec_mb}


def _old_videos_search(searcher: Any, query: np.ndarray, top: int) -> list[Any]:
    """--videos as it was before: every row a candidate, each scored by its frames in Python."""
    scores, rows = searcher.vectors.scores(query, searcher.vectors.size)
    return searcher._hits([searcher._candidate(int(r), float(s), query) for s, r in zip(scores, rows)], top, True)


def _python_filtered_search(searcher: Any, query: np.ndarray, top: int, where: Any) -> list[Any]:
    """A filter without a row mask: every row ranked, each row's video judged in Python."""
    facts = searcher.video_facts()
    scores, rows = searcher.vectors.scores(query, searcher.vectors.size)
    kept = []
    for s, r in zip(scores, rows):
        pos = searcher.vectors.position(int(r))
        if where.allows(facts.get(pos.video_id)):
            kept.append((int(r), float(s)))
            if len(kept) >= max(4 * top, 50):
                break
    return searcher._hits([searcher._candidate(r, s, query) for r, s in kept], top, False)


def bench_queries(index_dir: Path, repeat: int) -> dict[str, Any]:
    """Warm query latency (query vector ready; the search alone) on a large synthetic index:
    plain, with filters (1 and 10% of the videos, and one every video passes: the mask's own
    cost) and with --videos, against the code paths they replace, all in this one process."""
    from cliptool.search.filters import Filters
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir, text_runtime="numpy")
    texts = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
             "snow on mountains", "a cat", "fireworks over a city skyline"]
    vectors = [searcher.text_vector(t) for t in texts]
    paths = sorted(f.path for f in searcher.video_facts().values())
    tenth, one = Filters(under=tuple(paths[::10])), Filters(under=(paths[len(paths) // 2],))
    every = Filters(since=min(f.mtime for f in searcher.video_facts().values()))
    cases = {
        "plain": lambda v: searcher.search(v, top=10),
        "plain, --no-merge": lambda v: searcher.search(v, top=10, merge=False),
        "--in 10% of videos": lambda v: searcher.search(v, top=10, where=tenth),
        "--in 1 video": lambda v: searcher.search(v, top=10, where=one),
        "filter every video passes": lambda v: searcher.search(v, top=10, where=every),
        "--min-score 0.05": lambda v: searcher.search(v, top=10, where=Filters(min_score=0.05)),
        "--videos": lambda v: searcher.search(v, top=10, by_video=True),
        "--videos --in 10%": lambda v: searcher.search(v, top=10, by_video=True, where=tenth),
    }
    before = {
        "--videos": lambda v: _old_videos_search(searcher, v, 10),
        "--in 10% of videos": lambda v: _python_filtered_search(searcher, v, 10, tenth),
        "--in 1 video": lambda v: _python_filtered_search(searcher, v, 10, one),
    }
    for case in cases.values():  # warm: pages, masks, lazy columns
        case(vectors[0])
    rows: dict[str, Any] = {}
    for name, case in cases.items():
        times = []
        for _ in range(repeat):
            for v in vectors:
                t0 = time.perf_counter()
                case(v)
                times.append((time.perf_counter() - t0) * 1e3)
        rows[name] = {"ms": median(times)}
    for name, case in before.items():
        times, same, overlap = [], [], []
        key = (lambda h: h.video_id) if name == "--videos" else (lambda h: h.scene_id)
        for v in vectors[:3]:  # seconds each: a few
            t0 = time.perf_counter()
            old = [key(h) for h in case(v)]
            times.append((time.perf_counter() - t0) * 1e3)
            new = [key(h) for h in cases[name](v)]
            same.append(old == new)
            overlap.append(len(set(old) & set(new)) / max(1, len(old)))
        rows[name].update(before_ms=median(times), same_results=sum(same) / len(same),
                          overlap=sum(overlap) / len(overlap))
    return {"scenes": searcher.vectors.size, "videos": len(paths), "cases": rows}


def print_queries(r: dict[str, Any]) -> None:
    print(f"\nwarm query latency, {r['scenes']} scenes in {r['videos']} videos (median ms; query vector ready)")
    print(f"{'query':<28}{'now':>10}{'before':>12}{'same top-10':>14}{'overlap':>10}")
    for name, row in r["cases"].items():
        old = f"{row['before_ms']:.1f}" if "before_ms" in row else "-"
        same = f"{row['same_results']:.0%}" if "same_results" in row else "-"
        overlap = f"{row['overlap']:.0%}" if "overlap" in row else "-"
        print(f"{name:<28}{row['ms']:>10.2f}{old:>12}{same:>14}{overlap:>10}")
    print("(before: --videos scored every scene in Python; a filter without a row mask judges each "
          "ranked scene's video in Python. overlap: share of the before top-10, videos for --videos, "
          "found by now's; the synthetic frames are random, so a scene's mean says little about its "
          "best frame, which is --videos' worst case)")
