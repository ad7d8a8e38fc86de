"""One writer at a time, readers during a run, and Ctrl-C at any moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliptool.index.check import check_index
from cliptool.errors import IndexBusyError
from cliptool.store import IndexStore, SceneRecord, SceneVectors, VideoRecord, WriterLock, deferred_interrupt

from conftest import make_samples

N_CLIPS = 8
# Exit 130, or death by SIGINT (which a shell also shows as 130): CPython re-raises SIGINT at exit
# when a KeyboardInterrupt once went unhandled inside C-level code run during an import.
INTERRUPTED = (130, -signal.SIGINT)


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Several small clips with two shots each: an index run that takes a while."""
    out = tmp_path_factory.mktemp("many")
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30), (200, 200, 30), (200, 30, 200), (30, 200, 200),
               (120, 120, 120), (250, 140, 0)]
    for i in range(N_CLIPS):
        make_samples.write_clip(out / f"clip{i}.mp4", [
            (make_samples.circle(colours[i], (250, 250, 250)), 40),
            (make_samples.stripes((0, 0, 0), colours[i]), 40),
        ], size=(160, 120))
    return out


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clips long enough that an index run cannot end between a signal's cause and its arrival."""
    out = tmp_path_factory.mktemp("long")
    for i in range(N_CLIPS):
        make_samples.write_clip(out / f"clip{i}.mp4", [
            (make_samples.circle((40 + 25 * i, 60, 220), (250, 250, 250)), 150),
            (make_samples.stripes((0, 0, 0), (220, 40 + 25 * i, 30)), 150),
        ], size=(320, 240))
    return out


def _start(index_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cliptool", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(index_dir: Path) -> set[str]:
    try:
        with IndexStore(index_dir, lock_timeout=5) as store:
            return {v.path for v in store.videos()}
    except Exception:  # noqa: BLE001 - not created yet
        return set()


def test_second_writer_gets_index_in_use(index_dir: Path, cli, many_clips: Path, model_args) -> None:
    with WriterLock(index_dir):
        with pytest.raises(IndexBusyError, match=f"in use by process {os.getpid()}"):
            with WriterLock(index_dir):
                pass
        proc = cli("index", str(many_clips), *model_args)
        checking = cli("check", "--repair")  # a repair during a run could take its work for orphans
    assert proc.returncode == 4
    assert proc.stderr.strip() == f"cliptool: error: index at {index_dir} is in use by process {os.getpid()}"
    assert checking.returncode == 4 and "in use by process" in checking.stderr
    # Freed on exit: a run goes ahead now.
    with WriterLock(index_dir):
        pass


def _builds(index_dir: Path) -> tuple[str, list[str]]:
    root = index_dir / "faiss"
    return (root / "CURRENT").read_text(), sorted(p.name for p in root.iterdir() if p.is_dir())


def test_search_during_an_index_run(index_dir: Path, cli, many_clips: Path, model_args) -> None:
    """A search beside an index run finds the videos committed so far, and does so without
    rebuilding the search cache (it lays the new videos over the build it finds)."""
    cli("index", str(many_clips / "clip0.mp4"), *model_args, check=True)
    proc = _start(index_dir, "index", str(many_clips), *model_args)
    try:
        deadline = time.monotonic() + 240
        while len(_committed(index_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        # Pause the writer between commits (while it does not hold the stores), then search.
        paused = False
        while proc.poll() is None and not paused:
            proc.send_signal(signal.SIGSTOP)
            try:
                with IndexStore(index_dir, lock_timeout=0.3):
                    paused = True
            except IndexBusyError:
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.05)
        assert paused, "the index run ended before a search could run beside it; make the clips longer"
        done = _committed(index_dir)
        assert 1 < len(done) < N_CLIPS
        builds = _builds(index_dir)
        for _ in range(2):
            found = cli("search", "a red circle", "--videos", "-n", "50", "--json", timeout=120)
            assert found.returncode == 0, found.stderr
            paths = {hit["path"] for hit in json.loads(found.stdout)["results"]}
            assert paths == done  # what was finished so far, nothing half-written
        assert _builds(index_dir) == builds  # no search rebuilt the cache
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    final = cli("search", "a red circle", "--videos", "-n", "50", "--json")
    assert len(json.loads(final.stdout)["results"]) == N_CLIPS
    assert check_index(index_dir).ok


def test_ctrl_c_at_any_moment_stops_cleanly(index_dir: Path, many_clips: Path, model_args) -> None:
    """SIGINT during start-up, the model load and commits: exit 130, a message, no traceback,
    a consistent index; the next run completes it."""
    marks = ["start-up", "a commit"]
    for mark in marks:
        proc = _start(index_dir, "index", str(many_clips), *model_args)
        if mark == "start-up":
            time.sleep(1.5)
        else:
            before = len(_committed(index_dir))
            while len(_committed(index_dir)) <= before and proc.poll() is None:
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        if proc.returncode in INTERRUPTED:
            assert "interrupted; everything committed before this point is kept" in err
        else:
            assert proc.returncode == 0, err  # it had just finished
        if IndexStore(index_dir).exists():  # not yet when interrupted during start-up
            report = check_index(index_dir)
            assert [p.message for p in report.problems if p.kind != "orphan"] == []
    proc = _start(index_dir, "index", str(many_clips), *model_args, "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert len(_committed(index_dir)) == N_CLIPS
    assert check_index(index_dir).ok


@pytest.mark.parametrize("delay", [0.01, 0.03, 0.06, 0.1])
def test_ctrl_c_after_the_summary_keeps_the_outcome(tmp_path: Path, many_clips: Path, model_args, delay: float) -> None:
    """SIGINT while the process exits after a finished run (it has printed its summary): exit 0,
    or 130 with the message, and never a traceback or a death by SIGINT."""
    proc = _start(tmp_path / "index", "index", str(many_clips), *model_args)
    line = proc.stderr.readline()  # type: ignore[union-attr]
    while line and not line.startswith("indexed"):
        line = proc.stderr.readline()  # type: ignore[union-attr]
    assert line.startswith("indexed 8 new")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode == 0 or (proc.returncode == 130 and "interrupted" in err), (proc.returncode, err)


def _interrupt_once_locked(index_dir: Path, many_clips: Path, model_args) -> subprocess.CompletedProcess:
    proc = _start(index_dir, "index", str(many_clips), *model_args)
    lock = index_dir / "index.lock"
    while proc.poll() is None and not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in INTERRUPTED and "Traceback" not in err, err
    assert not _committed(index_dir), "a video was committed before the signal: the test needs a later one"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_model_load(index_dir: Path, long_clips: Path, model_args) -> None:
    """SIGINT once the run has taken the writer lock (model load and first video follow)."""
    proc = _interrupt_once_locked(index_dir, long_clips, model_args)
    assert "interrupted" in proc.stderr
    assert not index_dir.exists()  # a first run that committed nothing leaves no index behind (see below)


def test_a_first_run_cut_short_leaves_no_empty_index(tmp_path: Path, long_clips: Path, model_args) -> None:
    """Nothing committed: the new index is removed, so the next command says there is none
    (not that an empty one holds nothing); a folder the user had keeps what it held."""
    index_dir = tmp_path / "new"
    _interrupt_once_locked(index_dir, long_clips, model_args)
    assert not index_dir.exists()
    found = subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "search", "a dog"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 3 and "no index at" in found.stderr and "yet" in found.stderr, found.stderr
    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    _interrupt_once_locked(own, long_clips, model_args)
    assert os.listdir(own) == ["notes.txt"] and (own / "notes.txt").read_text() == "mine"


def test_a_first_run_cut_short_after_a_commit_searches_on_the_fast_path(tmp_path: Path, long_clips: Path,
                                                                         model_args) -> None:
    """The user cache holds the model's text export (an earlier index made it): a new index has
    it from its first commit, so a run cut short there still answers on the fast text path."""
    warm = tmp_path / "warm"
    done = _start(warm, "index", str(long_clips / "clip0.mp4"), *model_args)
    assert done.wait(timeout=300) == 0, done.stderr.read()  # type: ignore[union-attr]
    index_dir = tmp_path / "cut"
    proc = _start(index_dir, "index", str(long_clips), *model_args)
    try:
        while not _committed(index_dir) and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 1 <= len(_committed(index_dir)) < N_CLIPS
    found = _start(index_dir, "search", "a red circle", "--json")
    out, err = found.communicate(timeout=120)
    assert found.returncode == 0, err
    assert "slower path" not in err and err.strip() == "", err
    assert json.loads(out)["results"]


def test_interrupt_inside_a_commit_waits_for_it(tmp_path: Path) -> None:
    """Ctrl-C that arrives in the middle of put_video takes effect only after the commit."""

    class InterruptedStore(IndexStore):
        def _put_version(self, *args: object) -> None:
            super()._put_version(*args)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGINT)  # between the vectors and the commit point
            time.sleep(0.05)

    import numpy as np

    root = tmp_path / "ix"
    record = VideoRecord("v1", "/x.mp4", 1, 1.0, "fp", 1.0, 25.0, 2, 2, 25, 1, "h264", "m", 0.0, "")
    scenes = [SceneRecord(0, 0.0, 1.0, 0, 25, [0.5], [12])]
    vectors = [SceneVectors(np.ones(4, np.float32) / 2, np.ones((1, 4), np.float32) / 2)]
    with InterruptedStore(root, create=True) as store:
        with pytest.raises(KeyboardInterrupt):
            store.put_video(record, scenes, vectors)
        stored = store.get_video("v1")
        assert stored is not None and len(store.scenes(stored)) == 1 and len(store.vectors(stored)) == 1
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached = True
    assert reached
