"""The approximate index of a large segment: an IVF index with 8-bit scalar codes, trained from
the segment's own vectors, its nprobe tuned to a target recall on sample queries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cliptool import durable
from cliptool.errors import CliptoolError
from cliptool.vectors.faiss.segment import (
    APPROX_CANDIDATES,
    MERGE_CHUNK,
    VectorIndex,
    ivf_params,
    top,
)

APPROX_MIN_ROWS = 200_000  # a segment this large gets an approximate index (auto mode)


DELTA_APPROX_MIN_ROWS = 20_000  # a delta this large is encoded with the base's trained quantiser


APPROX_TARGET_RECALL = 0.99  # nprobe is tuned to this recall@10 (after re-ranking) on sample queries


APPROX_MODES = ("auto", "exact", "approx")


_APPROX_FLOOR = 1_024  # below this an exact scan is as fast, whatever was asked


VECTOR_INDEX_ENV = "CLIPTOOL_VECTOR_INDEX"


def approx_mode() -> str:
    """"auto" (approximate past APPROX_MIN_ROWS), "exact" or "approx", from CLIPTOOL_VECTOR_INDEX."""
    mode = os.environ.get(VECTOR_INDEX_ENV, "auto").strip().lower() or "auto"
    if mode not in APPROX_MODES:
        raise CliptoolError(f"{VECTOR_INDEX_ENV}={mode!r}: choose one of {', '.join(APPROX_MODES)}")
    return mode


def _wants_approx(rows: int, mode: str | None = None) -> bool:
    mode = mode or approx_mode()
    return rows >= _APPROX_FLOOR and (mode == "approx" or (mode == "auto" and rows >= APPROX_MIN_ROWS))


# -- the approximate index -------------------------------------------------------------------------
def approx_factory(rows: int) -> tuple[str, int]:
    """The index_factory string and number of lists for a segment of `rows` scenes: about
    2 sqrt(rows) inverted lists (a power of two) and 8-bit scalar codes of the residuals. The
    coarse quantiser is exact (2,048 lists at 1M rows: 0.1 ms a query) up to 8,192 lists, and
    HNSW past that (searched with efSearch >= nprobe: a smaller one probes fewer lists)."""
    nlist = int(2 ** round(np.log2(max(16.0, 2 * np.sqrt(max(rows, 1))))))
    nlist = max(16, min(nlist, 65_536, max(16, rows // 8)))
    quantiser = "_HNSW32" if nlist > 8192 else ""
    return f"IVF{nlist}{quantiser},SQ8", nlist


def sample_queries(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Query-like vectors: stored scene vectors moved well away from themselves (cosine about
    0.7 and 0.45 to their source), as a text or image query sits near, not on, what it finds."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    noise = rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(base.shape[1])
    scale = np.where(np.arange(len(rows)) % 2 == 0, 1.0, 2.0).astype(np.float32)[:, None]
    q = base + noise * scale
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def approx_recall(seg: VectorIndex, queries: np.ndarray, nprobe: int | None = None, k: int = 10,
                  exact: np.ndarray | None = None) -> float:
    """Recall@k of a segment's approximate search (with its exact re-ranking) against the exact
    scan (`exact`: its top-k rows per query, when known), for a batch of queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if exact is None:
        _, exact = seg.faiss.search(queries, k)
    info = seg.meta["approx"]
    params = ivf_params(info, int(nprobe or info["nprobe"]))
    wanted = min(seg.size, max(k, int(info.get("candidates", APPROX_CANDIDATES))))
    _, found = seg.approx.search(queries, wanted, params=params)
    vectors = seg.vectors_view()
    hits = 0
    for q, rows, want in zip(queries, found, exact):
        rows = np.sort(rows[rows >= 0])
        _, best = top(np.asarray(vectors[rows], dtype=np.float32) @ q, rows.astype(np.int64), k)
        hits += len(set(best.tolist()) & set(want.tolist()))
    return hits / float(k * len(queries))


_NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def tune_nprobe(seg: VectorIndex, info: dict[str, Any], queries: int = 400) -> None:
    """Sets info's nprobe: one step above the smallest reaching APPROX_TARGET_RECALL on sample
    queries (the step is a margin for queries unlike the sample: measured at 1M scenes, the
    smallest alone gave 0.976-0.981 on fresh queries), and the recall@10 measured with it."""
    sample = sample_queries(seg.vectors_view(), queries, seed=1)
    exact = seg.faiss.search(sample, 10)[1]
    ladder = [p for p in _NPROBES if p <= info["nlist"]]
    for i, nprobe in enumerate(ladder):
        if approx_recall(seg, sample, nprobe, exact=exact) >= APPROX_TARGET_RECALL or i == len(ladder) - 1:
            info["nprobe"] = ladder[min(i + 1, len(ladder) - 1)]
            break
    info["recall_at_10"] = round(approx_recall(seg, sample, info["nprobe"], exact=exact), 4)
    info["recall_queries"] = len(sample)


def approximate(directory: Path, trained_from: Path | None, mode: str | None = None) -> None:
    """Adds an approximate index to a new segment when it is large enough (see the module
    docstring). `trained_from`: the base segment whose trained quantiser a delta reuses."""
    rows = int(json.loads((directory / "meta.json").read_text()).get("scenes", 0))
    if (rows < DELTA_APPROX_MIN_ROWS) if trained_from is not None else not _wants_approx(rows, mode):
        return
    import faiss

    seg = VectorIndex(directory)
    n, d = seg.size, seg.dim
    if trained_from is not None:
        base_meta = json.loads((trained_from / "meta.json").read_text()) if (trained_from / "meta.json").exists() else {}
        if not base_meta.get("approx") or not (trained_from / "trained.faiss").exists() or n < DELTA_APPROX_MIN_ROWS:
            return
        index = faiss.read_index(str(trained_from / "trained.faiss"))
        info = {k: base_meta["approx"][k] for k in ("factory", "nlist", "nprobe", "candidates", "recall_at_10")}
        info["trained_on"] = "the base segment"
    else:
        if not _wants_approx(n, mode):
            return
        factory, nlist = approx_factory(n)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 40
        rng = np.random.default_rng(0)
        train_rows = np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))
        vectors = seg.vectors_view()
        index.train(np.ascontiguousarray(vectors[train_rows], dtype=np.float32))
        _write_index(index, directory / "trained.faiss")
        info = {"factory": factory, "nlist": nlist, "nprobe": 1, "candidates": APPROX_CANDIDATES,
                "trained_on": int(len(train_rows))}
    vectors = seg.vectors_view()
    for a in range(0, n, MERGE_CHUNK):
        index.add(np.ascontiguousarray(vectors[a : a + MERGE_CHUNK], dtype=np.float32))
    _write_index(index, directory / "approx.faiss")
    seg.meta["approx"] = info
    seg._approx = index
    if trained_from is None:
        tune_nprobe(seg, info)
    meta = json.loads((directory / "meta.json").read_text())
    meta["approx"] = info
    durable.write_text(directory / "meta.json", json.dumps(meta))


def _write_index(index: Any, path: Path) -> None:
    """A FAISS index written beside `path`, synced, and renamed into place (folder synced)."""
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    durable.sync_file(tmp)
    durable.replace(tmp, path)
