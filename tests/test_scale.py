"""Big collections: the synthetic index writer, the approximate index (recall against the exact
scan, re-ranking, row masks), and `status` showing which index answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cliptool.vectors.faiss as vi
import cliptool.vectors.faiss.live as faiss_live
import cliptool.vectors.faiss.segment as segment
from cliptool.bench.scale import synthetic_centres, synthetic_scene_vectors, write_synthetic
from cliptool.store import IndexStore
from cliptool.vectors.faiss import describe_cache, load_vector_index
from cliptool.vectors.base import ScenePosition

from conftest import ok, run


def _queries(index, count: int, seed: int) -> np.ndarray:
    """Text-query-like vectors: new draws near the collection's clusters, not stored vectors."""
    rng = np.random.default_rng(seed)
    centres = synthetic_centres(np.random.default_rng(0), max(64, index.size // 200), index.dim)
    scene, _ = synthetic_scene_vectors(rng, centres, count, 1, 0)
    noise = rng.standard_normal(scene.shape).astype(np.float32) / np.sqrt(index.dim)
    q = scene + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def approx_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50,000 synthetic 64-dim scenes, their cache built with the approximate index asked for."""
    index_dir = tmp_path_factory.mktemp("approx") / "index"
    mp = pytest.MonkeyPatch()
    mp.setenv(vi.VECTOR_INDEX_ENV, "approx")
    try:
        out = write_synthetic(index_dir, 50_000, 64, "synthetic-model", {"name": "m", "pretrained": "p"},
                              per_video=1000, frames=2, progress=False)
    finally:
        mp.undo()
    assert out["cache_rebuilt"] and out["scenes"] == 50_000
    return index_dir


def test_synthetic_index_is_written_through_the_stores(approx_index: Path) -> None:
    with IndexStore(approx_index) as store:
        records = list(store.videos())
        assert store.meta()["model_identity"] == "synthetic-model"
        first = sorted(records, key=lambda r: r.path)[0]
        scenes, vectors = store.scenes(first), store.vectors(first)
    assert len(records) == 50 and sum(r.scene_count for r in records) == 50_000
    assert len(scenes) == len(vectors) == 1000
    frames = np.stack([v.frames for v in vectors])
    assert np.allclose(np.linalg.norm(frames, axis=2), 1, atol=1e-5)
    mean = frames.mean(axis=1)
    assert np.allclose(np.stack([v.scene for v in vectors]), mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    # CLIP-like: frames close to their own scene, scenes of a video closer than unrelated ones
    own = np.einsum("nfd,nd->nf", frames, np.stack([v.scene for v in vectors]))
    assert own.mean() > 0.9
    cross = np.stack([v.scene for v in vectors]) @ np.stack([v.scene for v in vectors]).T
    assert 0.2 < np.median(cross) < 0.9


def test_approximate_index_recall_against_the_exact_scan(approx_index: Path) -> None:
    index = load_vector_index(approx_index)
    info = index.describe()
    assert info["kind"] == "approximate" and info["factory"].startswith("IVF") and info["factory"].endswith(",SQ8")
    assert info["recall_at_10"] >= 0.98  # measured when built, on its own sample queries
    queries = _queries(index, 200, seed=11)  # fresh queries
    _, exact = index.faiss.search(queries, 10)
    found = 0
    for q, want in zip(queries, exact):
        scores, rows = index.scores(q, 10)
        found += len(set(rows.tolist()) & set(want.tolist()))
        # re-ranked exactly: the scores are the stored vectors' own, best first
        assert np.allclose(scores, index.vectors_view()[rows] @ q, atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-7)
    recall = found / (10 * len(queries))
    assert recall >= 0.98, recall


def test_approximate_index_honours_a_row_mask(approx_index: Path) -> None:
    index = load_vector_index(approx_index)
    videos = index.video_of_rows()
    assert len(videos) == index.size
    wanted = sorted(set(videos.tolist()))[:3]
    allowed = np.isin(videos, wanted)
    q = _queries(index, 1, seed=5)[0]
    scores, rows = index.scores(q, 10, allowed=allowed)
    assert len(rows) == 10 and set(videos[rows]) <= set(wanted)
    exact = np.flatnonzero(allowed)[np.argsort(-(index.vectors_view()[allowed] @ q))[:10]]
    assert len(set(rows.tolist()) & set(exact.tolist())) >= 9


def test_small_indexes_stay_exact_and_status_shows_the_kind(approx_index: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    write_synthetic(small, 2_000, 32, "m2", {"name": "m2", "pretrained": "p"}, per_video=100, progress=False)
    assert describe_cache(small)["kind"] == "exact"
    assert load_vector_index(small).describe()["kind"] == "exact"
    status = json.loads(ok(run(approx_index, "status", "--json")).stdout)
    search = status["search_index"]
    assert search["kind"] == "approximate" and search["rows"] == 50_000 and search["approx"]["recall_at_10"] >= 0.98
    words = ok(run(approx_index, "status")).stdout
    assert "approximate, FAISS IVF" in words and "recall@10" in words
    assert "exact scan" in ok(run(small, "status")).stdout


def test_cache_columns_are_mapped_and_videos_numbered_without_strings(approx_index: Path, tmp_path: Path) -> None:
    index = load_vector_index(approx_index)
    table = np.load(index.directory / "table.npz")
    for name in table.files:  # each column: the stored values, read through a map of the file
        column = index._table[name]
        assert np.array_equal(column, table[name]) and not column.flags.owndata and not column.flags.writeable
    compressed = tmp_path / "t.npz"
    np.savez_compressed(compressed, a=np.arange(5))
    with np.load(compressed) as npz:
        assert segment._mapped_member(npz, "a") is None  # not mappable: read as before
        assert np.array_equal(segment._LazyTable(npz)["a"], np.arange(5))
    ids, column = index.video_numbers()
    assert np.array_equal(np.asarray(ids)[column], index.video_of_rows())
    # across segments a video keeps one number (here: the same segment twice, one overlay row)
    overlay = faiss_live._Overlay(2 * index.size, np.zeros((1, index.dim), np.float32), [np.zeros((0, index.dim))],
                          [ScenePosition(2 * index.size, "s", ids[3], "/p", 0, 0.0, 1.0, [])])
    live = vi.LiveIndex([index, index], [None, None], overlay, len(ids))
    live_ids, live_column = live.video_numbers()
    assert live_ids == ids and np.array_equal(live_column[: index.size], column)
    assert np.array_equal(live_column[index.size: 2 * index.size], column) and live_column[-1] == 3
    assert np.array_equal(np.asarray(live_ids)[live_column], live.video_of_rows())


def test_split_scan_works_in_a_forked_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flat scan's helper thread is the parent's: a forked child must start its own, not wait
    for one that does not exist there."""
    import os
    import signal

    small = tmp_path / "small"
    write_synthetic(small, 2_000, 32, "m3", {"name": "m3", "pretrained": "p"}, per_video=100, progress=False)
    monkeypatch.setattr(segment, "_SPLIT_ROWS", 1)  # two halves on two threads even here
    monkeypatch.setattr(segment, "usable_cores", lambda: 2)
    index = load_vector_index(small)
    query = _queries(index, 1, seed=2)[0]
    want = index.scores(query, 10)[1].tolist()  # starts the helper thread in this process
    pid = os.fork()
    if pid == 0:  # the child: a hang ends by the alarm (exit by signal), a wrong answer with 3
        signal.alarm(30)
        os._exit(0 if index.scores(query, 10)[1].tolist() == want else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
