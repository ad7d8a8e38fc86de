"""Serving from Milvus (Milvus Lite): the same hits as the FAISS cache (exact), the collection kept
in step with adds, replacements, moves and removals, `check` and `check --repair`, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_samples, ok, one_line_error, run

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None,
    reason="needs pymilvus and milvus-lite (pip install 'cliptool[cluster]')")

QUERIES = ["a red circle", "blue sky over green grass", "white words on black"]
SCORE_TOLERANCE = 1e-5  # Milvus returns float32 inner products; FAISS's are computed the same way


def _hits(searcher, query, **kwargs) -> list[tuple]:
    return [(h.scene_id, h.score, h.start, h.end, h.best_time, h.path, tuple(h.scene_ids))
            for h in searcher.search(query, **kwargs)]


def assert_same_hits(a: list[tuple], b: list[tuple]) -> None:
    """The same hits in the same order, scores within float tolerance; scenes tied on score may
    come in either order."""
    assert len(a) == len(b), (a, b)
    assert np.allclose([h[1] for h in a], [h[1] for h in b], atol=SCORE_TOLERANCE), (a, b)
    rounded = lambda hits: sorted((round(h[1], 4), h[0], *h[2:]) for h in hits)  # noqa: E731
    assert rounded(a) == rounded(b)
    ties = {round(h[1], 4) for h in a if sum(abs(x[1] - h[1]) < SCORE_TOLERANCE for x in a) > 1}
    assert [h[0] for h in a if round(h[1], 4) not in ties] == [h[0] for h in b if round(h[1], 4) not in ties]


@pytest.fixture(scope="module")
def milvus_index(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], model_args: list[str]):
    """(index dir, videos folder): the sample clips indexed with `--vector-store milvus` (Milvus
    Lite in the index directory)."""
    root = tmp_path_factory.mktemp("milvus")
    videos = root / "videos"
    videos.mkdir()
    for name, src in sample_clips.items():
        shutil.copy2(src, videos / name)
    index_dir = root / "index"
    ok(run(index_dir, "index", videos, *model_args, "--samples", "2", "--vector-store", "milvus"))
    return index_dir, videos


def _searchers(index_dir: Path):
    from cliptool.search.searcher import Searcher

    return Searcher(index_dir, vector_store="faiss"), Searcher(index_dir)


def _release(index_dir: Path) -> None:
    """Lets go of the Milvus Lite file, so that a cliptool process may open it."""
    from cliptool.vectors.milvus import release, resolve_target

    release(resolve_target(index_dir))


def test_recorded_and_same_hits_as_faiss(milvus_index, sample_clips) -> None:
    from cliptool.vectors.milvus import MilvusVectors
    from cliptool.search.filters import Filters

    index_dir, videos = milvus_index
    videos = videos.resolve()
    assert json.loads((index_dir / "vector-store.json").read_text())["vector_store"] == \
        f"milvus://{(index_dir / 'milvus.db').resolve()}"
    faiss, milvus = _searchers(index_dir)
    assert isinstance(milvus.vectors, MilvusVectors) and not isinstance(faiss.vectors, MilvusVectors)
    shapes = str((videos / "shapes.mp4").resolve())
    filters = [None, Filters.parse([shapes]), Filters.parse([str(videos)], min_duration="5"),
               Filters.parse(max_duration="5.5"), Filters.parse(since="2000-01-01", until="2999-01-01"),
               Filters.parse(since="2999-01-01"), Filters.parse(min_score="0.05")]
    image = make_samples.SAMPLES["shapes.mp4"][0][0](0, 320, 240)  # the first frame of a sample
    vectors = [faiss.text_vector(q) for q in QUERIES] + [faiss.model.encode_images([image])[0]]
    compared = 0
    for query in vectors:
        query = np.asarray(query, np.float32) / np.linalg.norm(query)
        for where in filters:
            for kwargs in ({}, {"by_video": True}, {"merge": False}):
                a, b = _hits(faiss, query, top=20, where=where, **kwargs), _hits(milvus, query, top=20, where=where, **kwargs)
                assert_same_hits(a, b)
                compared += len(a)
        assert_same_hits(_hits(faiss, query, top=2), _hits(milvus, query, top=2))
    assert compared > 100
    best = faiss.search(vectors[0], top=1)[0]
    assert [h.scene_id for h in milvus.similar(best.scene_id, top=5)] == [h.scene_id for h in faiss.similar(best.scene_id, top=5)]
    assert milvus.best_in_video(vectors[0], best.video_id).scene_id == faiss.best_in_video(vectors[0], best.video_id).scene_id
    under = milvus.search(vectors[0], top=20, where=Filters.parse([shapes]))
    assert under and {h.path for h in under} == {shapes}
    assert milvus.search(vectors[0], top=20, where=Filters.parse(since="2999-01-01")) == []

    _release(index_dir)  # the CLI reads the recorded store; --vector-store faiss overrides it
    by_milvus = json.loads(ok(run(index_dir, "search", QUERIES[0], "--json", "--videos")).stdout)["results"]
    by_faiss = json.loads(ok(run(index_dir, "search", QUERIES[0], "--json", "--videos",
                                 "--vector-store", "faiss")).stdout)["results"]
    assert [r["video_id"] for r in by_milvus] == [r["video_id"] for r in by_faiss] and len(by_faiss) == 3
    assert np.allclose([r["score"] for r in by_milvus], [r["score"] for r in by_faiss], atol=SCORE_TOLERANCE)


def test_serve_answers_from_milvus(milvus_index) -> None:
    from fastapi.testclient import TestClient

    from cliptool.serve import create_app

    index_dir, _ = milvus_index
    _release(index_dir)
    with TestClient(create_app(index_dir), base_url="http://127.0.0.1:8765") as client:
        served = client.get("/api/search", params={"q": QUERIES[1], "top": 5}).json()["results"]
    _, milvus = _searchers(index_dir)
    direct = milvus.search(milvus.text_vector(QUERIES[1]), top=5)
    assert [r["scene_id"] for r in served] == [h.scene_id for h in direct] and len(served) == 5


def test_kept_in_step_then_check_and_repair(milvus_index, sample_clips, model_args) -> None:
    from cliptool.vectors.milvus import collection_problems, collection_state, connect, resolve_target
    from cliptool.store import IndexStore

    index_dir, videos = milvus_index
    videos = videos.resolve()
    _release(index_dir)
    # an add, a replacement, a move and a removal in one run
    make_samples.write_clip(videos / "added.mp4", make_samples.SAMPLES["shapes.mp4"][1:])
    (videos / "sub").mkdir()
    os.replace(videos / "outdoors.mp4", videos / "sub" / "moved.mp4")
    make_samples.write_clip(videos / "titles.mp4", make_samples.SAMPLES["outdoors.mp4"][:1])  # new content
    (videos / "shapes.mp4").unlink()
    out = ok(run(index_dir, "index", videos, *model_args, "--samples", "2"))
    assert "1 new, 1 updated, 1 moved, 1 removed" in out.stderr
    target = resolve_target(index_dir)
    with IndexStore(index_dir) as store:
        records = list(store.videos())
    assert collection_state(index_dir, target) == "current"
    assert collection_problems(index_dir, target, records) == []
    faiss, milvus = _searchers(index_dir)
    assert {milvus.vectors.position(r).path for r in milvus.vectors.scores(faiss.text_vector("x"), 100)[1]} == \
        {r.path for r in records} == {str(videos / "added.mp4"), str(videos / "sub" / "moved.mp4"), str(videos / "titles.mp4")}
    for text in QUERIES:
        query = faiss.text_vector(text)
        assert_same_hits(_hits(faiss, query, top=20), _hits(milvus, query, top=20))

    # damaged (one video's scenes gone) and lagging (an old generation): check says so, repair rebuilds
    client = connect(target)
    client.delete(target.scenes, filter=f'video_id == "{records[0].video_id}"')
    client.alter_collection_properties(target.scenes, properties={"cliptool.generation": "old"})
    _release(index_dir)
    damaged = run(index_dir, "check", "--json")
    assert damaged.returncode == 1
    report = json.loads(damaged.stdout)
    assert report["collection"] == "stale"
    assert [p["kind"] for p in report["problems"]] == ["collection"]
    assert "holds" in report["problems"][0]["message"]
    repaired = json.loads(ok(run(index_dir, "check", "--repair", "--json")).stdout)
    assert repaired["problems"][0]["repaired"] and repaired["collection"] == "current"
    assert collection_problems(index_dir, target, records) == [] and collection_state(index_dir, target) == "current"
    faiss, milvus = _searchers(index_dir)
    query = faiss.text_vector(QUERIES[0])
    assert_same_hits(_hits(faiss, query, top=20), _hits(milvus, query, top=20))

    # a lagging collection is caught up by the search that opens it
    client = connect(target)
    client.delete(target.videos, filter=f'video_id == "{records[1].video_id}"')
    client.alter_collection_properties(target.scenes, properties={"cliptool.generation": "old"})
    _, milvus = _searchers(index_dir)
    assert collection_problems(index_dir, target, records) == [] and collection_state(index_dir, target) == "current"


def test_vector_store_uris(tmp_path: Path) -> None:
    from cliptool.errors import UsageError
    from cliptool.vectors.milvus import parse_vector_store

    assert parse_vector_store("faiss", tmp_path) is None
    lite = parse_vector_store("milvus", tmp_path)
    assert lite.lite and lite.uri == str(tmp_path.resolve() / "milvus.db") and lite.collection == "cliptool"
    assert parse_vector_store("milvus:///srv/x.db").uri == "/srv/x.db"
    assert parse_vector_store("rel.db").uri == str(Path("rel.db").resolve())
    server = parse_vector_store("milvus://milvus-host?collection=team_a")
    assert not server.lite and server.uri == "http://milvus-host:19530" and server.scenes == "team_a_scenes"
    assert parse_vector_store("milvus+https://milvus.example.org").uri == "https://milvus.example.org"
    for bad in ("elastic://x", "milvus://", "milvus://h?collection=a-b"):
        with pytest.raises(UsageError):
            parse_vector_store(bad, tmp_path)


def test_one_line_errors(milvus_index, tmp_path: Path) -> None:
    from cliptool.vectors.milvus import connect, resolve_target

    index_dir, _ = milvus_index
    # a Milvus Lite file another process holds
    connect(resolve_target(index_dir))
    one_line_error(run(index_dir, "search", "a dog"), 1, "one process at a time")
    _release(index_dir)
    # an unreachable server, a bad URI
    one_line_error(run(index_dir, "search", "a dog", "--vector-store", "milvus://127.0.0.1:9"), 1,
                   "cannot reach the Milvus server at http://127.0.0.1:9")
    fresh = tmp_path / "fresh-index"
    one_line_error(run(fresh, "index", tmp_path, "--vector-store", "milvus://127.0.0.1:9"), 1, "cannot reach")
    assert not (fresh / "vector-store.json").exists()  # nothing recorded, nothing indexed
    # no pymilvus: a module of that name that fails to import stands in for a missing one
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "pymilvus.py").write_text("raise ImportError('no pymilvus (test)')\n")
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cliptool", "search", "a dog"], capture_output=True, text=True,
                          timeout=120, env=env)
    one_line_error(proc, 1, "--vector-store milvus needs pymilvus: pip install 'cliptool[cluster]'")
    # nothing of Milvus is imported unless asked
    proc = subprocess.run([sys.executable, "-c", "import sys, cliptool.cli, cliptool.search.searcher; "
                           "print(any(m.split('.')[0] in ('pymilvus', 'milvus_lite') for m in sys.modules))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_building_a_collection_logs_no_traceback(milvus_index, caplog: pytest.LogCaptureFixture) -> None:
    """Milvus Lite's in-process server logs a traceback for each call it does not implement
    (pymilvus asks for AllocTimestamp while an index is built): where logging prints (a Ray
    driver, an application embedding cliptool), none of that may reach the user."""
    import logging

    from cliptool.vectors.milvus import resolve_target, sync_collection

    index_dir, _ = milvus_index
    with caplog.at_level(logging.WARNING):
        sync_collection(index_dir, resolve_target(index_dir), rebuild=True)
    _release(index_dir)
    assert not [r for r in caplog.records if r.name.startswith(("grpc", "pymilvus", "milvus_lite"))]
