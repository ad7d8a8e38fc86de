"""The three LevelDB stores and the FAISS cache, on real plyvel and FAISS."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.index.check import check_index
from cliptool.errors import IndexBusyError, IndexMismatchError, IndexMissingError
from cliptool.store import (
    CLEAN_MARKER, IndexStore, SceneRecord, SceneVectors, VideoRecord, WriterLock, decode_vectors, encode_vectors, generation,
)
from cliptool.vectors.faiss import current_build, load_vector_index

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def put(store: IndexStore, vid: str, n_scenes: int, seed: int) -> VideoRecord:
    rng = np.random.default_rng(seed)
    record = VideoRecord(vid, f"/videos/{vid}.mp4", 1, 1.0, "fp", 10.0, 25.0, 64, 48, 250, 0, "h264", "m", 0.0, "")
    scenes = [SceneRecord(i, i * 1.0, i + 1.0, i * 25, i * 25 + 25, [i + 0.5], [i * 25 + 12]) for i in range(n_scenes)]
    vectors = [SceneVectors(v, v[None, :]) for v in unit(rng, n_scenes)]
    return store.put_video(record, scenes, vectors)


def test_vectors_round_trip_in_compact_binary() -> None:
    v = SceneVectors(np.arange(DIM, dtype=np.float32), np.ones((3, DIM), np.float32))
    raw = encode_vectors(v)
    assert len(raw) == 8 + 4 * DIM * 4
    back = decode_vectors(raw)
    assert np.array_equal(back.scene, v.scene) and np.array_equal(back.frames, v.frames)
    with pytest.raises(ValueError):
        decode_vectors(raw[:-4])


def test_reindexing_a_video_replaces_it(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 3, 1)
        put(store, "bbbb", 2, 2)
        first = store.get_video("aaaa")
        put(store, "aaaa", 4, 3)
        second = store.get_video("aaaa")
        assert first is not None and second is not None and first.version != second.version
        assert [s.index for s in store.scenes(second)] == [0, 1, 2, 3]
        assert len(store.vectors(second)) == 4
        assert store.scenes(first) == [] and store.vectors(first) == []
        assert store.counts() == {"videos": 2, "scene_lists": 2, "embeddings": 6}


def test_recover_removes_what_no_record_names(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 2, 1)
        # a crash after writing vectors and scenes, before the commit record:
        store._db("embeddings").put(b"cccc/deadbeef/00000", encode_vectors(SceneVectors(np.ones(DIM, np.float32), np.ones((1, DIM), np.float32))))
        store._db("scenes").put(b"s/cccc/deadbeef", b"[]")
        assert store.recover() == 2
        assert store.counts() == {"videos": 1, "scene_lists": 1, "embeddings": 2}


def test_a_clean_close_spares_the_next_run_the_orphan_scan_and_check_still_scans(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        assert store.recover() == 0
        put(store, "aaaa", 2, 1)
    assert (tmp_path / CLEAN_MARKER).exists()
    with IndexStore(tmp_path) as store:  # an orphan written behind the stores' back
        store._db("scenes").put(b"s/cccc/deadbeef", b"[]")
        assert store.recover() == 0  # not scanned: marked clean
        assert store.counts()["scene_lists"] == 2
    assert [p.kind for p in check_index(tmp_path).problems] == ["orphan"]  # check scans all the same
    assert check_index(tmp_path, repair=True).problems[0].repaired
    with IndexStore(tmp_path) as store:
        assert store.counts() == {"videos": 1, "scene_lists": 1, "embeddings": 2}
    assert check_index(tmp_path).problems == []


_CUT_SHORT = """
import os, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_store import IndexStore, put
with IndexStore(Path(sys.argv[1])) as store:
    store._commit = lambda write: os._exit(9)  # dies after the vectors and scenes, before the record
    put(store, "bbbb", 3, 2)
"""


def test_a_change_cut_short_leaves_the_stores_unmarked_until_recovered(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        store.recover()
        put(store, "aaaa", 2, 1)
    proc = subprocess.run([sys.executable, "-c", _CUT_SHORT, str(tmp_path), str(Path(__file__).parent)])
    assert proc.returncode == 9
    assert not (tmp_path / CLEAN_MARKER).exists()
    with IndexStore(tmp_path) as store:
        assert store.counts() == {"videos": 1, "scene_lists": 2, "embeddings": 5}
        put(store, "dddd", 1, 3)  # a later change in another store does not mark them clean
    assert not (tmp_path / CLEAN_MARKER).exists()
    with IndexStore(tmp_path) as store:
        assert store.recover() == 4
    assert (tmp_path / CLEAN_MARKER).exists()
    assert check_index(tmp_path).problems == []


def test_a_failed_change_leaves_the_stores_unmarked(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        store.recover()
    assert (tmp_path / CLEAN_MARKER).exists()
    record = VideoRecord("eeee", "/videos/eeee.mp4", 1, 1.0, "fp", 10.0, 25.0, 64, 48, 250, 0, "h264", "m", 0.0, "")
    scene = SceneRecord(0, 0.0, 1.0, 0, 25, [0.5], [12])
    with IndexStore(tmp_path) as store:
        with pytest.raises(ValueError):  # frames that do not fit the scene vector's size
            store.put_video(record, [scene], [SceneVectors(np.ones(DIM, np.float32), np.ones(DIM + 1, np.float32))])
    assert not (tmp_path / CLEAN_MARKER).exists()


def test_model_mismatch_is_refused_once_videos_exist(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("model-a", {"name": "a", "pretrained": "x"})
        store.bind_model("model-b", {"name": "b", "pretrained": "x"})  # empty index: may change model
        put(store, "aaaa", 1, 1)
        with pytest.raises(IndexMismatchError, match="model-b"):
            store.bind_model("model-a", {"name": "a", "pretrained": "x"})


def test_schema_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store._db("scenes").put(b"!schema", b"0")
    with pytest.raises(IndexMismatchError, match="schema version 0"):
        IndexStore(tmp_path).open()


def test_missing_index_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IndexMissingError, match="cliptool index"):
        IndexStore(tmp_path / "none").open()


def test_second_writer_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    import os

    with WriterLock(tmp_path):
        with pytest.raises(IndexBusyError, match=f"process {os.getpid()}"):
            WriterLock(tmp_path).__enter__()
    with WriterLock(tmp_path):
        pass


def test_search_sees_every_commit_without_rebuilding_the_cache(tmp_path: Path) -> None:
    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        old = put(store, "aaaa", 3, 1)
        old_vecs = store.vectors(old)
    first = load_vector_index(tmp_path)
    assert first.size == 3
    token = generation(tmp_path)
    assert load_vector_index(tmp_path).directory == first.directory  # fresh: reused
    with IndexStore(tmp_path) as store:
        record = put(store, "bbbb", 2, 2)
        vecs = store.vectors(record)
    assert generation(tmp_path) != token
    second = load_vector_index(tmp_path)
    assert second.size == 5 and second.base.directory == first.directory  # the new video laid over the build
    assert sorted(p.name for p in (tmp_path / "faiss").iterdir() if p.is_dir()) == [first.directory.name]
    scores, rows = second.scores(vecs[1].scene, 1)
    assert second.position(int(rows[0])).scene_id == f"bbbb/{record.version}/00001"
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(second.scene_vector(int(rows[0])), vecs[1].scene)
    with IndexStore(tmp_path) as store:
        store.delete_video("aaaa")
    third = load_vector_index(tmp_path)
    assert third.size == 2 and third.base.directory == first.directory
    scores, rows = third.scores(old_vecs[0].scene, 5)  # the removed video's rows are hidden
    assert len(rows) == 2 and {third.position(int(r)).video_id for r in rows} == {"bbbb"}
    assert len(third.rows_of_video("aaaa")) == 0 and len(third.rows_of_video("bbbb")) == 2
    with IndexStore(tmp_path) as store:  # replaced: the old version hidden, the new one laid over
        again = put(store, "bbbb", 1, 3)
        new_vec = store.vectors(again)[0].scene
    fourth = load_vector_index(tmp_path)
    assert fourth.size == 1
    scores, rows = fourth.scores(new_vec, 3)
    assert [fourth.position(int(r)).scene_id for r in rows] == [f"bbbb/{again.version}/00000"]


def test_split_scan_gives_the_single_scan_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large indexes are scanned in two halves on two threads; the merged top-k, ties included,
    is what one FAISS scan of the whole index returns."""
    import cliptool.vectors.faiss.segment as segment

    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        record = put(store, "aaaa", 300, 1)
        dup = store.vectors(record)[7].scene
        put(store, "bbbb", 301, 2)
    with IndexStore(tmp_path) as store:  # a scene equal to one of aaaa's: a tie across the halves
        rec = VideoRecord("dddd", "/videos/dddd.mp4", 1, 1.0, "fp", 10.0, 25.0, 64, 48, 250, 0, "h264", "m", 0.0, "")
        store.put_video(rec, [SceneRecord(0, 0.0, 1.0, 0, 25, [0.5], [12])], [SceneVectors(dup, dup[None, :])])
    index = load_vector_index(tmp_path)
    monkeypatch.setattr(segment, "_SPLIT_ROWS", 10)
    monkeypatch.setattr(segment, "usable_cores", lambda: 2)
    rng = np.random.default_rng(5)
    for query in [dup, *unit(rng, 20)]:
        for k in (1, 10, 50, index.size):
            scores, rows = index.scores(query, k)
            want_scores, want_rows = index.faiss.search(np.asarray(query, np.float32)[None, :], k)
            assert len(rows) == k
            assert np.allclose(scores, want_scores[0], atol=1e-6)
            assert set(rows[np.abs(scores - scores[-1]) > 1e-6]) <= set(want_rows[0])  # same set above the cut
    scores, rows = index.scores(dup, 2)
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)  # the two copies, in row order
    assert rows[0] < index.size // 2 <= rows[1]


_REBUILDER = """
import os, sys, time
from pathlib import Path
from cliptool.vectors.faiss import current_build, load_vector_index, rebuild
real_replace = os.replace

def slow_replace(src, dst):  # widen the moment between a build's rename and its switch-in
    real_replace(src, dst)
    if os.path.basename(str(src)).startswith("tmp-"):
        time.sleep(0.02)

os.replace = slow_replace
root = Path(sys.argv[1])
for _ in range(int(sys.argv[2])):
    rebuild(root)
    build = current_build(root)
    assert build is not None and (build / "meta.json").exists(), "CURRENT names a removed build"
    index = load_vector_index(root)
    assert index.size == 6, index.size
print("ok")
"""


def test_concurrent_rebuilds_never_remove_each_others_build(tmp_path: Path) -> None:
    """Processes that rebuild at once take turns: each one's build is whole when it is made
    current, no search finds the cache missing, and one build is left at the end."""
    import subprocess
    import sys

    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 3, 1)
        put(store, "bbbb", 3, 2)
    procs = [subprocess.Popen([sys.executable, "-c", _REBUILDER, str(tmp_path), "25"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0 and out.strip() == "ok", err
    builds = [p.name for p in (tmp_path / "faiss").iterdir() if p.is_dir()]
    assert builds == [current_build(tmp_path).name]
    assert load_vector_index(tmp_path).size == 6


def test_a_cache_that_cannot_be_loaded_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cliptool.vectors.faiss as vi
    from cliptool.errors import CliptoolError

    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        put(store, "aaaa", 3, 1)
    load_vector_index(tmp_path)

    def broken(self, directory):  # every build found is unreadable (disk trouble, say)
        raise OSError("unreadable")

    monkeypatch.setattr(vi.VectorIndex, "__init__", broken)
    with pytest.raises(CliptoolError, match=r"cannot read the search cache .* \(unreadable\); run `cliptool check --repair`"):
        load_vector_index(tmp_path)
