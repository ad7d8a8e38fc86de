"""Stage 7: the FAISS cache over all scene vectors, kept in line with the stores commit by commit.

The cache lives in `<index dir>/faiss/`. It is a list of *segments*, each a folder written once
and never changed: `flat.faiss` (the exact scene vectors, FAISS's flat inner-product format),
`frames.npy` (sample-frame vectors), `table.npz` (row -> scene id, video, times), `videos.json`
(each video's id, version and path), `meta.json` (model, rows) and, on a large segment,
`approx.faiss` (an approximate FAISS index, see below). `CURRENT` is the manifest: a small JSON
file naming the segments in order, the *retired* videos of each (tombstones: rows of videos
removed, replaced or moved since that segment was written) and the store generation it
matches. It is replaced atomically, so a reader always sees a whole cache. (An older cache's
`CURRENT` holds a bare build name; it reads as a one-segment cache.)

Growing without rebuilding: after each commit the index run calls `sync_cache` with the ids it
changed. That writes the changed videos' rows as a new (delta) segment and retires their old
rows, so its cost is that of the change. Small delta segments are merged as they pile up (a
binary counter: at most a few dozen, each merge proportional to its segments); when retired
rows pass `COMPACT_RETIRED` of the cache, or the deltas pass `COMPACT_DELTAS` of the first
segment, everything is merged into a new base (compaction, reported). Merges read the cache's
own files, never the stores. Builds and merges run one at a time under `build.lock`; only the
holder removes segments no manifest names, and a reader keeps the files it opened.

A search in another process reads the manifest; when it matches the stores' generation the
stores are not opened at all. Otherwise (a commit not yet synced, or a crash between a commit
and its sync) the search reads the video records, lays the few videos committed since over the
cache in memory and hides the rows retired since (`LiveIndex`); when that is too much it
appends it to the cache itself (`sync_cache`, never a rebuild from scratch). The next index run
and `check --repair` bring a lagging cache back in line the same way.

Approximate search: a segment of `APPROX_MIN_ROWS` rows or more (or of 1,024 or more,
with CLIPTOOL_VECTOR_INDEX=approx; never, with =exact) also gets an `index_factory` IVF index with
8-bit scalar codes, trained from its own vectors (a HNSW coarse quantiser past 1,024 lists).
Its nprobe is tuned when it is built, on sample queries against the exact scan, to the smallest
giving recall@10 >= `APPROX_TARGET_RECALL`, and the recall measured is kept in its meta.json
(`cliptool status` shows it). Its candidates are re-ranked exactly from the stored vectors.
Delta segments large enough use the base's trained quantiser; small ones are scanned exactly.
"""

from __future__ import annotations

from cliptool.vectors.faiss.approx import (
    APPROX_MIN_ROWS,
    APPROX_MODES,
    VECTOR_INDEX_ENV,
    approx_factory,
    approx_mode,
    approx_recall,
    sample_queries,
    tune_nprobe,
)
from cliptool.vectors.faiss.live import (
    LiveIndex,
    cache_problems,
    cached_video_paths,
    describe_cache,
    load_vector_index,
)
from cliptool.vectors.faiss.manifest import (
    CACHE_DIR,
    MANIFEST_FORMAT,
    cache_state,
    current_build,
    read_manifest,
)
from cliptool.vectors.faiss.segment import CacheChangedError, VectorIndex
from cliptool.vectors.faiss.sync import (
    COMPACT_DELTAS,
    COMPACT_RETIRED,
    MAX_DELTAS,
    SyncResult,
    rebuild,
    sync_cache,
)

__all__ = ["APPROX_MIN_ROWS", "APPROX_MODES", "CACHE_DIR", "COMPACT_DELTAS", "COMPACT_RETIRED", "CacheChangedError", "LiveIndex", "MANIFEST_FORMAT", "MAX_DELTAS", "SyncResult", "VECTOR_INDEX_ENV", "VectorIndex", "approx_factory", "approx_mode", "approx_recall", "cache_problems", "cache_state", "cached_video_paths", "current_build", "describe_cache", "load_vector_index", "read_manifest", "rebuild", "sample_queries", "sync_cache", "tune_nprobe"]
