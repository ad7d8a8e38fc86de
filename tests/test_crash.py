"""Fault injection: SIGKILL a real `cliptool index` run at random moments, many times.

After every kill the stores must agree with each other and with the search cache as the kill
left it (only orphans, which the next run deletes, may be left; a cache behind the stores is
compared on what it holds), a search must see exactly the stored videos, the cache must come
back in line by appending what it lacks (no rebuild), every stored video must be whole
and equal to the clean run's, and a last run must finish the index with exactly the scenes of a
clean, uninterrupted run. Half the kills land at random times of a run; the other half just
after the generation token changed, i.e. inside or right after a commit.

CLIPTOOL_KILLS=N sets the kills of the long (slow) variant; CLIPTOOL_CRASH_SEED replays a run.
"""

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

from cliptool.index.check import check_index
from cliptool.store import IndexStore, generation
from cliptool.vectors.faiss import cache_state, load_vector_index, sync_cache

from conftest import SHARED, make_samples

DEFAULT_KILLS = 20
REAL_CLIPS = ("bikes.mp4",)  # a small real video from ../shared/testdata/scenes


@pytest.fixture(scope="module")
def crash_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic clips with known cuts, plus real ones when ../shared/testdata is present."""
    out = tmp_path_factory.mktemp("crash-videos")
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30)]
    for i, colour in enumerate(colours):
        make_samples.write_clip(out / f"synthetic {i}.mp4", [
            (make_samples.circle(colour, (250, 250, 250)), 30),
            (make_samples.stripes((0, 0, 0), colour), 30),
            (make_samples.sky, 20),
        ], size=(160, 120))
    for name in REAL_CLIPS:
        src = SHARED / "scenes" / name
        if src.is_file():
            os.symlink(src, out / name)  # read in place, never copied
    return out


def _run(index_dir: Path, folder: Path, model_args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cliptool", "index", str(folder), *model_args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _scenes(index_dir: Path) -> dict[str, list[tuple[float, float]]]:
    with IndexStore(index_dir) as store:
        return {v.path: [(s.start_time, s.end_time) for s in store.scenes(v)] for v in store.videos()}


def _search_sees_the_stores(index_dir: Path) -> None:
    """A search loads exactly the stored videos' scenes, vectors and paths."""
    index = load_vector_index(index_dir)
    with IndexStore(index_dir) as store:
        stored = {v.video_id: (v.path, [(s.scene_id, vec.scene) for s, vec in zip(store.scenes(v), store.vectors(v))])
                  for v in store.videos()}
    assert index.size == sum(len(scenes) for _, scenes in stored.values())
    for vid, (path, scenes) in stored.items():
        rows = sorted(index.rows_of_video(vid), key=lambda r: index.position(int(r)).scene_index)
        assert [index.position(int(r)).scene_id for r in rows] == [sid for sid, _ in scenes]
        assert all(index.position(int(r)).path == path for r in rows)
        for r, (_, vec) in zip(rows, scenes):
            assert np.allclose(index.scene_vector(int(r)), vec, atol=1e-6)


def _assert_consistent(index_dir: Path, expected: dict[str, list[tuple[float, float]]]) -> int:
    """Stores agree with each other and with a rebuilt cache; returns the videos stored."""
    if not IndexStore(index_dir).exists():
        return 0  # killed before the stores were created
    report = check_index(index_dir)
    assert [p.message for p in report.problems if p.kind != "orphan"] == []
    stored = _scenes(index_dir)
    for path, spans in stored.items():
        assert spans == expected[path], f"{path} is stored with other scenes than a clean run's"
    if stored:
        _search_sees_the_stores(index_dir)  # before any repair, whatever the kill left the cache in
        missing = cache_state(index_dir) == "missing"
        assert sync_cache(index_dir).rebuilt == missing  # caught up by appending, not rebuilt
        report = check_index(index_dir)
        assert report.cache == "current"
        assert [p.message for p in report.problems if p.kind != "orphan"] == []
        assert report.scenes == sum(len(expected[p]) for p in stored)
    return len(stored)


def _kill_many(folder: Path, tmp_path: Path, model_args: list[str], kills: int) -> None:
    seed = int(os.environ.get("CLIPTOOL_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (CLIPTOOL_CRASH_SEED={seed} replays it), kills: {kills}")
    rng = random.Random(seed)

    clean_dir = tmp_path / "clean"
    started = time.monotonic()
    proc = _run(clean_dir, folder, model_args)
    _, err = proc.communicate(timeout=600)
    clean_seconds = time.monotonic() - started
    assert proc.returncode == 0, err
    expected = _scenes(clean_dir)
    assert len(expected) == len(list(folder.iterdir()))

    index_dir = tmp_path / "crashed"
    outcomes = {"during a run": 0, "after a commit": 0, "finished first": 0}
    done = 0
    run_seconds = clean_seconds  # how long a run takes; a first run may have exported the model's towers
    while done < kills:
        proc = _run(index_dir, folder, model_args)
        started = time.monotonic()
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.2, run_seconds))
            how = "during a run"
        else:  # wait for a commit (the generation token changes), then kill within ~30 ms
            token = generation(index_dir)
            while proc.poll() is None and generation(index_dir) == token:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
            how = "after a commit"
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        if proc.returncode == 0:  # it finished before the kill: check it, then start over
            run_seconds = min(run_seconds, time.monotonic() - started)  # kill sooner from now on
            assert _scenes(index_dir) == expected
            assert check_index(index_dir).ok
            outcomes["finished first"] += 1
            shutil.rmtree(index_dir)
            continue
        assert proc.returncode == -signal.SIGKILL, err
        outcomes[how] += 1
        done += 1
        _assert_consistent(index_dir, expected)
    print(f"kills survived: {done} ({outcomes}); a clean run took {clean_seconds:.1f} s")

    proc = _run(index_dir, folder, model_args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert _scenes(index_dir) == expected
    report = check_index(index_dir)
    assert report.ok and report.problems == [], report.problems
    assert report.scenes == sum(len(s) for s in expected.values())


def test_sigkill_at_random_moments(crash_folder: Path, tmp_path: Path, model_args: list[str]) -> None:
    _kill_many(crash_folder, tmp_path, model_args, DEFAULT_KILLS)


@pytest.mark.slow
def test_sigkill_many_times(crash_folder: Path, tmp_path: Path, model_args: list[str]) -> None:
    if "CLIPTOOL_KILLS" not in os.environ:
        pytest.skip("set CLIPTOOL_KILLS=N to run (make test-long uses 200)")
    _kill_many(crash_folder, tmp_path, model_args, int(os.environ["CLIPTOOL_KILLS"]))
