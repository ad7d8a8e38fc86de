"""The incremental search cache: appended commit by commit, merged and compacted, against a full
rebuild and against an exact scan of the stores; SIGKILL during cache updates."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cliptool.vectors.faiss as vi
import cliptool.vectors.faiss.live as live
import cliptool.vectors.faiss.sync as sync
from cliptool.index.check import check_index
from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord, generation
from cliptool.vectors.faiss import cache_state, load_vector_index, read_manifest, rebuild, sync_cache

DIM = 16


def _vectors(rng: np.random.Generator, n: int) -> list[SceneVectors]:
    out = []
    for _ in range(n):
        frames = rng.normal(size=(int(rng.integers(1, 4)), DIM)).astype(np.float32)
        frames /= np.linalg.norm(frames, axis=1, keepdims=True)
        scene = frames.mean(axis=0)
        out.append(SceneVectors(scene / np.linalg.norm(scene), frames))
    return out


def put(store: IndexStore, vid: str, n: int, rng: np.random.Generator, path: str | None = None) -> VideoRecord:
    record = VideoRecord(vid, path or f"/videos/{vid}.mp4", 1, 1.0, "fp", max(10.0, n + 1.0), 25.0, 64, 48, 250, 0, "h264",
                         "m", 0.0, "")  # long enough for its scenes (check looks)
    vectors = _vectors(rng, n)
    scenes = [SceneRecord(i, float(i), i + 1.0, i * 25, i * 25 + 25, [i + 0.25 * (j + 1) for j in range(len(v.frames))],
                          [i * 25 + j for j in range(len(v.frames))]) for i, v in enumerate(vectors)]
    return store.put_video(record, scenes, vectors)


def move(store: IndexStore, old: VideoRecord, new_id: str) -> VideoRecord:
    record = VideoRecord(**{**old.__dict__, "video_id": new_id, "path": f"/videos/{new_id}.mp4"})
    return store.move_video(old.video_id, record)


def truth(index_dir: Path, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Exact top-k (scene id, score) of every query over every scene vector in the stores."""
    with IndexStore(index_dir) as store:
        pairs = [(s.scene_id, v.scene) for r in store.videos() for s, v in zip(store.scenes(r), store.vectors(r))]
    if not pairs:
        return [[] for _ in queries]
    ids = [p[0] for p in pairs]
    mat = np.stack([p[1] for p in pairs])
    out = []
    for q in queries:
        scores = mat @ q
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]
        out.append([(ids[i], float(scores[i])) for i in order])
    return out


def assert_same_tops(seen: list[list[tuple[str, float]]], exact: list[list[tuple[str, float]]], tol: float = 2e-5) -> None:
    """The index's top-k is the exact top-k: the same scores rank by rank, and the same scenes,
    except that scenes whose scores tie (within float rounding) may trade places, or trade in
    and out at the k-th."""
    assert len(seen) == len(exact)
    for got, want in zip(seen, exact):
        assert len(got) == len(want), (got, want)
        assert all(abs(g[1] - w[1]) <= tol for g, w in zip(got, want)), (got, want)
        got_d, want_d = dict(got), dict(want)
        assert len(got_d) == len(got), got
        for sid in got_d.keys() & want_d.keys():
            assert abs(got_d[sid] - want_d[sid]) <= tol, (sid, got, want)
        for sid in got_d.keys() ^ want_d.keys():  # only ties at the cut may differ
            assert abs({**want_d, **got_d}[sid] - want[-1][1]) <= tol, (sid, got, want)


def answers(index_dir: Path, queries: np.ndarray, k: int) -> dict[str, object]:
    """What a search sees: top-k scene ids and scores by scene vector, frame candidates, each
    video's scenes, positions and vectors of the hits."""
    index = load_vector_index(index_dir)
    tops, frames, details = [], [], {}
    for q in queries:
        scores, rows = index.scores(q, k)
        tops.append([(index.position(int(r)).scene_id, round(float(s), 5)) for s, r in zip(scores, rows)])
        frames.append(sorted(index.position(r).scene_id for r in index.frame_candidates(q, k, 10**9)))
        for r in rows:
            pos = index.position(int(r))
            details[pos.scene_id] = (pos.path, pos.start_time, pos.sample_times,
                                     np.round(index.frame_vectors(int(r)), 5).tolist(),
                                     np.round(index.scene_vector(int(r)), 5).tolist())
    with IndexStore(index_dir) as store:
        vids = sorted(r.video_id for r in store.videos())
    per_video = {vid: sorted(index.position(int(r)).scene_id for r in index.rows_of_video(vid)) for vid in vids}
    return {"size": index.size, "tops": tops, "frames": frames, "videos": per_video, "details": details}


def rebuilt_answers(index_dir: Path, tmp: Path, queries: np.ndarray, k: int) -> dict[str, object]:
    other = tmp / "rebuilt"
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(index_dir, other, ignore=shutil.ignore_patterns("faiss"))
    rebuild(other)
    return answers(other, queries, k)


def test_incremental_cache_equals_a_full_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adds, replacements, moves and removals, each appended to the cache as the index run
    does (only the videos touched), with deltas merging and compactions on the way: after every
    step a search sees exactly what a cache rebuilt from the stores sees, and what an exact
    scan of the stores gives; the cache is never rebuilt from scratch."""
    monkeypatch.setattr(sync, "COMPACT_DELTAS", 3.0)  # let deltas pile up and merge
    monkeypatch.setattr(sync, "MAX_DELTAS", 4)
    rng = np.random.default_rng(7)
    pick = random.Random(7)
    index_dir = tmp_path / "index"
    queries = np.stack([v.scene for v in _vectors(rng, 6)])
    messages: list[str] = []
    with IndexStore(index_dir, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        videos = {f"v{i:03d}": put(store, f"v{i:03d}", 5, rng) for i in range(4)}
    assert sync_cache(index_dir).rebuilt
    base = read_manifest(index_dir)["segments"][0]["name"]
    most_segments, compactions, serial = 1, 0, 4
    for step in range(40):
        op = pick.choice(["add", "add", "replace", "move", "remove"] if len(videos) > 2 else ["add"])
        since = generation(index_dir)
        with IndexStore(index_dir) as store:
            if op == "add":
                vid = f"v{serial:03d}"
                serial += 1
                videos[vid] = put(store, vid, pick.randint(0, 7), rng)
                touched = [vid]
            else:
                vid = pick.choice(sorted(videos))
                touched = [vid]
                if op == "replace":
                    videos[vid] = put(store, vid, pick.randint(1, 6), rng)
                elif op == "move":
                    new_id = f"v{serial:03d}"
                    serial += 1
                    videos[new_id] = move(store, videos.pop(vid), new_id)
                    touched.append(new_id)
                else:
                    store.delete_video(vid)
                    del videos[vid]
        result = sync_cache(index_dir, touched, since=since, report=messages.append)
        assert not result.rebuilt, f"step {step} ({op}) rebuilt the cache from the stores"
        compactions += result.compacted
        assert cache_state(index_dir) == "current"
        manifest = read_manifest(index_dir)
        most_segments = max(most_segments, len(manifest["segments"]))
        seen = answers(index_dir, queries, 8)
        assert seen == rebuilt_answers(index_dir, tmp_path, queries, 8), f"step {step} ({op})"
        assert_same_tops(seen["tops"], truth(index_dir, queries, 8))
        assert check_index(index_dir).ok, f"step {step} ({op})"
    assert most_segments >= 3  # deltas were appended, and merged (at most MAX_DELTAS + 1 segments)
    assert compactions >= 1 and any("compacted the search cache" in m and "retired rows dropped" in m for m in messages)
    assert read_manifest(index_dir)["segments"][0]["name"] != base  # a compaction wrote a new base


def test_a_search_appends_a_large_change_instead_of_rebuilding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search that finds more committed since the cache than it lays over it in memory
    appends it to the cache (the base segment stays), and then reads the cache as current."""
    monkeypatch.setattr(live, "_OVERLAY_LIMIT", 1)
    monkeypatch.setattr(sync, "COMPACT_DELTAS", 100.0)
    rng = np.random.default_rng(3)
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 8, rng)
    rebuild(tmp_path)
    base = read_manifest(tmp_path)["segments"][0]["name"]
    with IndexStore(tmp_path) as store:  # committed without a sync, as by a run killed after its commit
        put(store, "bbbb", 5, rng)
    assert cache_state(tmp_path) == "stale"
    index = load_vector_index(tmp_path)
    assert index.size == 13 and cache_state(tmp_path) == "current"
    assert [s["name"] for s in read_manifest(tmp_path)["segments"]][0] == base


_KILLED_WRITER = """
import sys, numpy as np, random
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import cliptool.vectors.faiss as vi
from cliptool.store import IndexStore, generation
from cliptool.vectors.faiss import sync_cache
from test_incremental_cache import put
vi.COMPACT_DELTAS, vi.MAX_DELTAS = 3.0, 3
root, seed = Path(sys.argv[1]), int(sys.argv[2])
rng, pick = np.random.default_rng([seed, 1]), random.Random(seed)  # not the test's own stream
with IndexStore(root) as store:
    vids = sorted(r.video_id for r in store.videos())
serial = 0
while True:
    since = generation(root)
    with IndexStore(root) as store:
        if len(vids) < 3 or pick.random() < 0.5:
            vid = f"s{seed}-{serial}"
            serial += 1
            put(store, vid, pick.choice([1, 3, 40, 200]), rng)
            vids.append(vid)
        elif pick.random() < 0.5:
            vid = pick.choice(vids)
            put(store, vid, pick.choice([2, 60]), rng)
        else:
            vid = vids.pop(pick.randrange(len(vids)))
            store.delete_video(vid)
    sync_cache(root, [vid], since=since)
"""


def test_sigkill_during_cache_updates(tmp_path: Path) -> None:
    """A writer that commits videos and appends them to the cache (merging and compacting on
    the way) is killed at random moments, half of them while a segment is being written: after
    each kill `check` finds nothing wrong, a search sees exactly the stores, and `check
    --repair` brings the cache back in line without a rebuild; the writer then goes on."""
    seed = int(os.environ.get("CLIPTOOL_CRASH_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    pick = random.Random(seed)
    rng = np.random.default_rng(seed)
    index_dir = tmp_path / "index"
    with IndexStore(index_dir, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        for i in range(3):
            put(store, f"first{i}", 20, rng)
    rebuild(index_dir)
    queries = np.stack([v.scene for v in _vectors(rng, 4)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(vi.__file__).parents[3]), os.environ.get("PYTHONPATH", "")])}
    during_write = 0
    for kill in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(index_dir), str(seed + kill),
                                 str(Path(__file__).parent)], env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        if kill % 2:  # wait for a segment being written (a tmp- folder), then kill at once
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                if any(p.name.startswith("tmp-") for p in (index_dir / "faiss").iterdir()):
                    during_write += 1
                    break
                time.sleep(0.001)
        else:
            time.sleep(pick.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err
        report = check_index(index_dir)
        assert [p.message for p in report.problems if p.kind != "orphan"] == []
        seen = answers(index_dir, queries, 10)
        assert_same_tops(seen["tops"], truth(index_dir, queries, 10))
        if kill % 4 < 2:  # caught up (appended, maybe merged), never rebuilt from the stores
            assert not sync_cache(index_dir).rebuilt
        repaired = check_index(index_dir, repair=True)
        assert repaired.ok and repaired.cache == "current"
        assert answers(index_dir, queries, 10) == rebuilt_answers(index_dir, tmp_path, queries, 10)
        assert not any(p.name.startswith("tmp-") for p in (index_dir / "faiss").iterdir())
    assert during_write >= 1


def test_a_search_outlives_the_segments_a_merge_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A searcher (the web app's, say) opened the cache, then an index run in another process
    merged it into new segments and removed the old ones: its next queries still answer, from
    the files it mapped or from the cache as it is now, with the same hits as a fresh searcher."""
    from cliptool.search.searcher import Searcher

    monkeypatch.setenv(vi.VECTOR_INDEX_ENV, "approx")  # an approximate index, read on first use
    index_dir = tmp_path / "index"
    rng = np.random.default_rng(3)
    with IndexStore(index_dir, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        for i in range(5):
            put(store, f"v{i}", 250, rng)
    sync_cache(index_dir)
    searcher = Searcher(index_dir)
    old = [root for root in (tmp_path / "index" / "faiss").iterdir() if root.is_dir()]
    assert old and all((d / "approx.faiss").is_file() for d in old)
    sync_cache(index_dir, rebuild_all=True)
    assert not any(d.exists() for d in old)
    queries = rng.normal(size=(3, DIM)).astype(np.float32)
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        want = [(h.scene_id, round(h.score, 5)) for h in Searcher(index_dir).search(q, top=5, merge=False)]
        assert [(h.scene_id, round(h.score, 5)) for h in searcher.search(q, top=5, merge=False)] == want


def test_a_merge_without_room_on_the_disk_waits_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction whose new segment would not fit beside the old ones is postponed (one note),
    the cache answers from its segments as a rebuilt one does, and a later update with room
    compacts."""
    rng = np.random.default_rng(5)
    index_dir = tmp_path / "index"
    queries = np.stack([v.scene for v in _vectors(rng, 4)])
    with IndexStore(index_dir, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 40, rng)
    rebuild(index_dir)
    monkeypatch.setattr(sync, "_free_bytes", lambda path: 10 << 20)  # 10 MB free: under MERGE_SPARE_BYTES alone
    since = generation(index_dir)
    with IndexStore(index_dir) as store:
        put(store, "bbbb", 30, rng)  # deltas at 75% of the base: a compaction is due
    result = sync_cache(index_dir, ["bbbb"], since=since)
    assert not result.compacted and len(read_manifest(index_dir)["segments"]) == 2
    assert len(result.messages) == 1 and result.messages[0].startswith("postponed compacting the search cache")
    assert "GB free" in result.messages[0] and cache_state(index_dir) == "current"
    since = generation(index_dir)
    with IndexStore(index_dir) as store:
        put(store, "dddd", 1, rng)
    again = sync_cache(index_dir, ["dddd"], since=since)  # still no room: not said again by this process
    assert not again.compacted and again.messages == [] and len(read_manifest(index_dir)["segments"]) == 3
    seen = answers(index_dir, queries, 10)
    assert seen == rebuilt_answers(index_dir, tmp_path, queries, 10)
    monkeypatch.undo()
    since = generation(index_dir)
    with IndexStore(index_dir) as store:
        put(store, "cccc", 2, rng)
    result = sync_cache(index_dir, ["cccc"], since=since)
    assert result.compacted and len(read_manifest(index_dir)["segments"]) == 1
    assert_same_tops(answers(index_dir, queries, 10)["tops"], truth(index_dir, queries, 10))
    assert check_index(index_dir).ok
