"""Serving from Milvus: Milvus Lite's build time and query latency against the FAISS cache on
the synthetic indexes, and whether their top 10 agree."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.bench.measure import median, run_child, vmhwm_mb
from cliptool.bench.scale import scale_index

MILVUS_QUERIES = 10  # query-like vectors per size (stored scene vectors moved away from themselves)


def milvus_latency(index_dir: Path, repeat: int) -> dict[str, Any]:
    """In one process: builds (once) a Milvus Lite collection of the index, then warm query
    latency through the searcher against the FAISS cache (plain, --videos, a length filter),
    alternating per query, and the bare top-10 scene search of each (FAISS's flat scan: exact);
    and whether their top 10 agree with the exact scan."""
    from cliptool.vectors.milvus import collection_state, parse_vector_store, release, sync_collection
    from cliptool.search.filters import Filters
    from cliptool.search.searcher import Searcher
    from cliptool.vectors.faiss import sample_queries

    index_dir = Path(index_dir)
    target = parse_vector_store(f"milvus://{index_dir.resolve() / 'bench-milvus.db'}")
    assert target is not None
    built = index_dir / "bench-milvus.json"
    if built.is_file() and collection_state(index_dir, target) == "current":
        build = json.loads(built.read_text())
    else:
        t0 = time.perf_counter()
        sync = sync_collection(index_dir, target, rebuild=True)
        build = {"insert_s": time.perf_counter() - t0, "scenes": sync.scenes, "peak_rss_mb": vmhwm_mb()}
        built.write_text(json.dumps(build))
    faiss = Searcher(index_dir, vector_store="faiss")
    milvus = Searcher(index_dir, vector_store=target.spelled)
    index = faiss.vectors
    base = index.segments[0] if hasattr(index, "segments") else index
    queries = sample_queries(base.vectors_view(), MILVUS_QUERIES, seed=4321)
    durations = sorted(faiss.video_facts()[v].duration for v in faiss.row_videos()[0])
    short = Filters(max_duration=durations[max(0, len(durations) // 10 - 1)])  # about 10% of the videos
    cases = {"plain": {}, "videos": {"by_video": True}, "filter 10%": {"where": short}}
    out: dict[str, Any] = {"build": build, "faiss_kind": index.describe().get("kind"), "queries": len(queries)}
    for searcher in (faiss, milvus):  # warm up
        searcher.search(queries[0], top=10)
        searcher.search(queries[1], top=10, by_video=True)
    for label, kwargs in cases.items():
        times: dict[str, list[float]] = {"faiss": [], "milvus": []}
        same = 0
        for _ in range(repeat if label == "plain" else 1):
            for q in queries:
                found = {}
                for name, searcher in (("faiss", faiss), ("milvus", milvus)):
                    t0 = time.perf_counter()
                    found[name] = [h.scene_id for h in searcher.search(q, top=10, **kwargs)]
                    times[name].append((time.perf_counter() - t0) * 1e3)
                same += found["faiss"] == found["milvus"]
        out[label] = {"faiss_ms": median(times["faiss"]), "milvus_ms": median(times["milvus"]),
                      "same_top10": same / len(times["faiss"])}
    bare: dict[str, list[float]] = {"faiss_flat": [], "milvus": []}
    exact_same = 0
    client = milvus.vectors.client  # type: ignore[union-attr]
    for q in queries:
        t0 = time.perf_counter()
        flat = _flat_top(index, q, 10)
        bare["faiss_flat"].append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        hits = client.search(target.scenes, data=[q.tolist()], limit=10, output_fields=["scene_id"],
                             search_params={"metric_type": "IP"})
        bare["milvus"].append((time.perf_counter() - t0) * 1e3)
        exact_same += [h["entity"]["scene_id"] for h in hits[0]] == [index.position(int(r)).scene_id for r in flat]
    out["bare_top10"] = {"faiss_flat_ms": median(bare["faiss_flat"]), "milvus_ms": median(bare["milvus"]),
                         "milvus_equals_exact": exact_same / len(queries)}
    out["vmhwm_mb"] = vmhwm_mb()
    release(target)
    return out


def _flat_top(index: Any, query: np.ndarray, k: int) -> list[int]:
    """The exact top-k rows of one query by each segment's flat scan (no approximate index)."""
    segments = index.segments if hasattr(index, "segments") else [index]
    offsets = index.offsets if hasattr(index, "segments") else [0]
    scores, rows = [], []
    for seg, off in zip(segments, offsets):
        s, r = seg.faiss.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
        scores.append(s[0])
        rows.append(r[0] + int(off))
    s, r = np.concatenate(scores), np.concatenate(rows)
    return [int(x) for x in r[np.argsort(-s, kind="stable")[:k]]]


def bench_milvus(out: Path, ckpt: Path, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Milvus Lite against FAISS on the synthetic indexes of `sizes` scenes (each measured in a
    new process); [] with a note when pymilvus or milvus-lite is missing."""
    import importlib.util

    if importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None:
        print("bench: Milvus skipped: pip install 'cliptool[cluster]'", file=sys.stderr)
        return []
    rows = []
    for scenes in sizes:
        index_dir, _ = scale_index(out, ckpt, scenes)
        print(f"bench: Milvus Lite against FAISS at {scenes} scenes", file=sys.stderr)
        capture = out / f"milvus-{scenes}.out"
        wall, rss, code = run_child([sys.executable, "-c", "import sys, json; from cliptool.bench.milvus import milvus_latency; "
                                     "print(json.dumps(milvus_latency(sys.argv[1], int(sys.argv[2]))))",
                                     str(index_dir), str(repeat)], capture=capture)
        if code != 0:
            print(f"bench: Milvus at {scenes} scenes failed (see {capture})", file=sys.stderr)
            continue
        rows.append({"scenes": scenes, **json.loads(capture.read_text().strip().splitlines()[-1])})
    return rows


def print_milvus(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\nserving from Milvus Lite against the FAISS cache (synthetic 512-d vectors; warm, top 10, "
          "query vector ready; medians, ms)")
    head = ("scenes", "insert s", "plain faiss / milvus", "--videos", "10% filter", "bare top-10 flat / milvus",
            "same top 10", "FAISS kind")
    print(" | ".join(head))
    for r in rows:
        p, v, f, b = r["plain"], r["videos"], r["filter 10%"], r["bare_top10"]
        print(" | ".join([str(r["scenes"]), f"{r['build']['insert_s']:.0f}",
                          f"{p['faiss_ms']:.1f} / {p['milvus_ms']:.1f}", f"{v['faiss_ms']:.1f} / {v['milvus_ms']:.1f}",
                          f"{f['faiss_ms']:.1f} / {f['milvus_ms']:.1f}", f"{b['faiss_flat_ms']:.1f} / {b['milvus_ms']:.1f}",
                          f"{p['same_top10']:.0%} (bare = exact {b['milvus_equals_exact']:.0%})", str(r["faiss_kind"])]))
