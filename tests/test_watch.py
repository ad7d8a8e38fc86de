"""`cliptool watch` and `serve --watch`: a copy in progress is indexed once, whole; a rename is a
move; a deletion a removal; a kill mid-run loses nothing; Ctrl-C stops it; polling works too."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cliptool.index.check import check_index
from cliptool.index.watch import describe_changes, network_filesystem
from cliptool.store import IndexStore, VideoRecord

from conftest import make_samples, one_line_error

SETTLE = 2.5  # --settle of these tests; the watcher's debounce is 0.5 s
INTERRUPTED = (130, -signal.SIGINT)  # as in test_concurrency


class Watch:
    """`python -m cliptool ARGS` (watch, or serve --watch) in a fresh process; its stderr read
    line by line as it comes, each line with the time it arrived."""

    def __init__(self, index_dir: Path, *args: str) -> None:
        env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cliptool", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def err(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 90, count: int = 1) -> float:
        """The time the `count`-th line matching `pattern` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t, line in list(self.lines) if re.search(pattern, line)]
            if len(found) >= count:
                return found[count - 1]
            assert self.proc.poll() is None, f"watcher exited {self.proc.returncode}:\n{self.err}"
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{self.err}")

    def matching(self, pattern: str, since: int = 0) -> list[str]:
        """The lines matching `pattern`, from line number `since` on."""
        return [line for _, line in list(self.lines)[since:] if re.search(pattern, line)]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def watching():
    """Starts watchers; any still running at the end of the test is killed."""
    started: list[Watch] = []

    def start(index_dir: Path, *args: str) -> Watch:
        w = Watch(index_dir, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small clips with several shots each (an index run over a few of them takes seconds)."""
    out = tmp_path_factory.mktemp("watch-clips")
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30), (200, 200, 30), (200, 30, 200)]
    found = {}
    for i, colour in enumerate(colours):
        segments = []
        for k in range(4 + 2 * i):
            other = colours[(i + k + 1) % len(colours)]
            painter = make_samples.circle(colour, (250, 250, 250)) if k % 2 else make_samples.stripes(other, colour)
            segments.append((painter, 40))
        found[f"clip{i}.mp4"] = out / f"clip{i}.mp4"
        make_samples.write_clip(found[f"clip{i}.mp4"], segments, size=(160, 120))
    return found


def _put(src: Path, dst: Path) -> None:
    """A whole file arrives at once, as one moved in does (its mtime an hour ago)."""
    part = dst.with_name(f".{dst.name}.part")  # hidden: not looked at
    shutil.copyfile(src, part)
    past = time.time() - 3600
    os.utime(part, (past, past))
    os.rename(part, dst)


def _inotify_instances(pid: int) -> int:
    """How many inotify instances a process holds (Linux)."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        pytest.skip("no /proc here")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except OSError:
            pass
    return count


def _records(index_dir: Path) -> dict[str, VideoRecord]:
    """path -> record of every indexed video."""
    if not IndexStore(index_dir).exists():
        return {}
    with IndexStore(index_dir, lock_timeout=10) as store:
        return {v.path: v for v in store.videos()}


def _scenes_and_vectors(index_dir: Path, path: Path) -> tuple[list[tuple[float, float]], list[bytes]]:
    with IndexStore(index_dir, lock_timeout=10) as store:
        record = next(v for v in store.videos() if v.path == str(path))
        scenes = [(s.start_time, s.end_time) for s in store.scenes(record)]
        vectors = [v.scene.tobytes() + v.frames.tobytes() for v in store.vectors(record)]
    return scenes, vectors


def _problems(index_dir: Path) -> list[str]:
    """What `check` finds, orphans aside (a repair removes those; the kill tests of
    test_concurrency accept them too)."""
    return [p.message for p in check_index(index_dir).problems if p.kind != "orphan"]


def test_a_slow_copy_is_indexed_once_and_whole(tmp_path: Path, clips: dict[str, Path], model_args, watching) -> None:
    """Written in chunks with pauses longer than the debounce and shorter than the settle time:
    one record, as many scenes as `index` finds in the finished file, and one "added" line."""
    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    w = watching(index_dir, "watch", str(videos), *model_args, "--settle", str(SETTLE))
    w.wait_for(r"^watching ")
    _put(clips["clip0.mp4"], videos / "clip0.mp4")  # a first run: the model's exports made, once
    w.wait_for(r"^added .*clip0\.mp4")
    data = clips["clip2.mp4"].read_bytes()
    target = videos / "arriving.mp4"
    chunks = 4
    with open(target, "wb") as out:
        for k in range(chunks):
            out.write(data[k * len(data) // chunks:(k + 1) * len(data) // chunks])
            out.flush()
            if k < chunks - 1:
                time.sleep(1.2)  # > the 0.5 s debounce, < the 2.5 s settle time
    finished = time.monotonic()
    added = w.wait_for(r"^added .*arriving\.mp4 \(\d+ scenes\)$")
    time.sleep(SETTLE + 1.5)  # room for a second (wrong) run to show
    code = w.stop()
    assert code in INTERRUPTED and "Traceback" not in w.err, w.err
    assert added - finished >= SETTLE, "indexed before the file had settled"
    print(f"added {added - finished:.2f} s after the last chunk (settle {SETTLE} s)")
    assert len(w.matching("arriving")) == 1, w.err  # added once: no failure, no update, no second add
    records = _records(index_dir)
    assert set(records) == {str(target), str(videos / "clip0.mp4")}
    reference = tmp_path / "reference"
    proc = subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(reference), "index",
                           str(clips["clip2.mp4"]), *model_args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    whole = _records(reference)[str(clips["clip2.mp4"])]
    assert records[str(target)].scene_count == whole.scene_count > 3
    assert records[str(target)].size == len(data) and records[str(target)].fingerprint == whole.fingerprint


def test_a_rename_is_a_move_and_a_deletion_a_removal(tmp_path: Path, clips: dict[str, Path], model_args,
                                                     watching) -> None:
    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    for name in ("clip0.mp4", "clip1.mp4"):
        _put(clips[name], videos / name)
    w = watching(index_dir, "watch", str(videos), *model_args, "--settle", str(SETTLE))
    w.wait_for(r"^watching ")
    w.wait_for(r"^added ", count=2)
    assert _inotify_instances(w.proc.pid) == 1  # file events (the polling test sees none)
    old, new = videos / "clip1.mp4", videos / "renamed.mp4"
    before = _records(index_dir)[str(old)]
    scenes, vectors = _scenes_and_vectors(index_dir, old)
    mark = len(w.lines)
    os.rename(old, new)
    w.wait_for(rf"^moved {re.escape(str(old))} -> {re.escape(str(new))}$", timeout=30)
    after = _records(index_dir)
    assert set(after) == {str(videos / "clip0.mp4"), str(new)}
    assert after[str(new)].scene_count == before.scene_count and after[str(new)].fingerprint == before.fingerprint
    assert _scenes_and_vectors(index_dir, new) == (scenes, vectors)  # the stored scenes, carried over
    assert not w.matching(r"^(added|removed) ", since=mark), w.err  # no decoding again, no removal

    (videos / "clip0.mp4").unlink()
    w.wait_for(rf"^removed {re.escape(str(videos / 'clip0.mp4'))}$", timeout=30)
    assert set(_records(index_dir)) == {str(new)}
    code = w.stop()
    assert code in INTERRUPTED and "Traceback" not in w.err, w.err
    assert check_index(index_dir).ok


def _committed(index_dir: Path) -> set[str]:
    try:
        return set(_records(index_dir))
    except Exception:  # noqa: BLE001 - held for a moment, or not created yet
        return set()


def test_killed_mid_run_loses_nothing_and_a_restart_completes(tmp_path: Path, clips: dict[str, Path], model_args,
                                                              watching) -> None:
    """SIGKILL while a run commits several videos: `check` finds nothing wrong (orphans aside),
    and the next watcher's catch-up run indexes the rest."""
    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    _put(clips["clip0.mp4"], videos / "clip0.mp4")
    w = watching(index_dir, "watch", str(videos), *model_args, "--settle", str(SETTLE))
    w.wait_for(r"^watching ")
    w.wait_for(r"^added ")
    names = ["clip2.mp4", "clip3.mp4", "clip4.mp4"]
    for name in names:
        _put(clips[name], videos / name)
    deadline = time.monotonic() + 120
    while len(_committed(index_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.proc.send_signal(signal.SIGKILL)  # one of the new videos is in, the others in progress
    w.stop()
    done = _committed(index_dir)
    assert 2 <= len(done) < 1 + len(names), f"the kill came too late: {done}\n{w.err}"
    assert _problems(index_dir) == []
    again = watching(index_dir, "watch", str(videos), *model_args, "--settle", str(SETTLE))
    again.wait_for(r"^watching ")
    assert set(_records(index_dir)) == {str(videos / n) for n in ["clip0.mp4", *names]}
    assert len(again.matching(r"^added ")) == 1 + len(names) - len(done), again.err
    assert again.stop() in INTERRUPTED
    assert check_index(index_dir, repair=True).ok and check_index(index_dir).ok


def test_ctrl_c_stops_with_130_and_no_traceback(tmp_path: Path, clips: dict[str, Path], model_args,
                                                watching) -> None:
    """Idle, and in the middle of an index run: exit 130, the usual line, a consistent index."""
    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    _put(clips["clip0.mp4"], videos / "clip0.mp4")
    w = watching(index_dir, "watch", str(videos), *model_args)
    w.wait_for(r"^watching ")
    assert w.stop() == 130
    assert "Traceback" not in w.err and w.err.endswith(
        "cliptool: interrupted; everything committed before this point is kept"), w.err

    w = watching(index_dir, "watch", str(videos), *model_args)
    w.wait_for(r"^watching ")
    for name in ("clip3.mp4", "clip4.mp4"):
        _put(clips[name], videos / name)
    lock = index_dir / "index.lock"
    deadline = time.monotonic() + 60
    while lock.read_text().strip() != str(w.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.stop() in INTERRUPTED
    assert "Traceback" not in w.err and "interrupted; everything committed before this point is kept" in w.err, w.err
    assert _problems(index_dir) == []
    assert lock.read_text() == ""  # the writer lock let go


def test_polling_picks_up_a_new_file(tmp_path: Path, clips: dict[str, Path], model_args, watching) -> None:
    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    w = watching(index_dir, "watch", str(videos), *model_args, "--poll", "1", "--settle", "1")
    w.wait_for(r"^watching .*rescanning every 1 s")
    assert _inotify_instances(w.proc.pid) == 0  # no file events: rescans
    _put(clips["clip1.mp4"], videos / "polled.mp4")
    w.wait_for(r"^added .*polled\.mp4 ", timeout=60)
    assert set(_records(index_dir)) == {str(videos / "polled.mp4")}
    assert w.stop() in INTERRUPTED


def test_serve_watch_answers_during_index_runs(tmp_path: Path, clips: dict[str, Path], model_args,
                                               watching) -> None:
    """`serve --watch`: the server keeps answering while the watcher commits new videos, and
    sees them."""
    import httpx

    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    _put(clips["clip0.mp4"], videos / "clip0.mp4")
    w = watching(index_dir, "watch", str(videos), *model_args)  # the index, with the test's model
    w.wait_for(r"^watching ")
    w.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = watching(index_dir, "serve", "--port", str(port), "--watch", str(videos))
    s.wait_for(r"^watching ")
    names = ["clip2.mp4", "clip3.mp4", "clip4.mp4"]
    for name in names:
        _put(clips[name], videos / name)
    statuses, counts = [], set()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        deadline = time.monotonic() + 120
        while len(counts) < 2 or max(counts) < 1 + len(names):
            assert time.monotonic() < deadline, (statuses, counts, s.err)
            r = c.get("/api/status")
            statuses.append(r.status_code)
            if r.status_code == 200:
                counts.add(r.json()["videos"])
            found = c.get("/api/search", params={"q": "a circle", "top": 3})
            statuses.append(found.status_code)
    assert set(statuses) == {200}, statuses
    assert 1 in counts and max(counts) == 1 + len(names)
    s.wait_for(r"^added ", count=len(names))
    code = s.stop()
    assert code == 0 and "Traceback" not in s.err, (code, s.err)


def test_watch_help_and_usage_errors(cli, tmp_path: Path) -> None:
    proc = cli("watch", "--help")
    assert proc.returncode == 0 and "--settle" in proc.stdout and "--poll" in proc.stdout, proc.stderr
    one_line_error(cli("watch", str(tmp_path / "absent")), 2, "no such file or folder")
    one_line_error(cli("watch", str(tmp_path), "--poll", "0"), 2, "--poll")
    one_line_error(cli("watch", str(tmp_path), "--settle", "-1"), 2, "--settle")
    one_line_error(cli("serve", "--watch"), 2, "--watch needs the folders")
    one_line_error(cli("serve", str(tmp_path)), 2, "add --watch")


def test_without_file_events_it_rescans(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where file events cannot be had (no inotify watches left, say), the watcher rescans every
    30 s instead, and says so in its first line."""
    import watchfiles

    from cliptool.index.watch import Watcher
    from cliptool.models.spec import ModelSpec

    calls = []

    def no_events(*roots, force_polling, poll_delay_ms, stop_event, **options):  # noqa: ANN001, ANN003, ANN202
        calls.append((force_polling, poll_delay_ms))
        if not force_polling:
            raise OSError("OS file watch limit reached")
        while not stop_event.is_set():
            yield set()
            time.sleep(0.05)

    monkeypatch.setattr(watchfiles, "watch", no_events)
    videos = tmp_path / "videos"
    videos.mkdir()
    said: list[str] = []
    config, ckpt = tiny_model
    watcher = Watcher([videos], tmp_path / "index", ModelSpec(str(config), str(ckpt)), say=said.append)
    watcher.run(stopped=lambda: bool(said))
    assert calls == [(False, 300), (True, 30000)]
    assert said == [f"watching {videos} (rescanning every 30 s: file events unavailable (OS file watch limit "
                    "reached)); a file is indexed once unchanged for 2 s; Ctrl-C stops"]


def _record(path: str, fingerprint: str, indexed_at: float = 1.0, scenes: int = 3) -> VideoRecord:
    return VideoRecord(path.strip("/").replace("/", "_"), path, 100, 1.0, fingerprint, 10.0, 25.0, 64, 48, 250,
                       scenes, "h264", "m", indexed_at, "v")


def test_describe_changes_names_each_change_once() -> None:
    a, b, c, d = _record("/v/a.mp4", "fa"), _record("/v/b.mp4", "fb"), _record("/v/c.mp4", "fc"), \
        _record("/v/d.mp4", "fd")
    moved = _record("/v/b2.mp4", "fb")
    twin = _record("/v/d2.mp4", "fd")  # d's content again, but the run did not say it moved it
    new = _record("/v/e.mp4", "fe", scenes=1)
    redone = _record("/v/c.mp4", "fc2", indexed_at=2.0, scenes=5)
    before = {r.video_id: r for r in (a, b, c, d)}
    after = {r.video_id: r for r in (a, moved, redone, twin, new)}
    assert describe_changes(before, after, {"moved /v/b.mp4 -> /v/b2.mp4"}) == [
        "moved /v/b.mp4 -> /v/b2.mp4", "updated /v/c.mp4 (5 scenes)", "added /v/d2.mp4 (3 scenes)",
        "added /v/e.mp4 (1 scene)", "removed /v/d.mp4"]
    assert describe_changes(before, before) == []


def test_network_file_systems_are_polled(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/media /mnt/my\\040media nfs4 rw 0 0\n"
                      "//nas/share /mnt/nas cifs rw 0 0\n")
    assert network_filesystem(Path("/mnt/my media/films"), str(mounts)) == "nfs4"
    assert network_filesystem(Path("/mnt/nas"), str(mounts)) == "cifs"
    assert network_filesystem(Path("/mnt/nasty"), str(mounts)) is None
    assert network_filesystem(Path("/home/me"), str(mounts)) is None
    assert network_filesystem(Path("/home/me"), str(tmp_path / "absent")) is None
