"""Keeps an index in step with folders: `cliptool watch` and `cliptool serve --watch`.

File events come from watchfiles (Rust notify: inotify, FSEvents, ReadDirectoryChangesW) on a
thread of their own and queue up; the thread that calls `Watcher.run` is the one committer. A
video file that appears or changes is *pending* until its size and mtime have stayed the same
for `settle` seconds (a copy in progress is never indexed half-way). A deletion, a folder moved
in or out, or a pending file that settled makes the index *dirty*; `debounce` seconds after the
last such change (a burst of them: one run) an index run over the watched paths (`index_paths`,
exactly as `cliptool index` runs) handles new, changed, moved and deleted files, with the files
still pending held back. Each video is committed on its own, so a crash or Ctrl-C loses at most
the one in progress; the first run of a restarted watcher catches up.

Where file events cannot be had (a network file system, whose changes made on other machines
raise no event here; no inotify watches left) the folders are rescanned every FALLBACK_POLL
seconds instead; `poll` forces rescanning at that period.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from cliptool.errors import CliptoolError, IndexBusyError, NothingToDoError, UsageError, one_line, printable
from cliptool.index.indexer import WRITER_LOCK_TIMEOUT, index_paths
from cliptool.index.worker import DEFAULT_FILE_TIMEOUT
from cliptool.media.discover import is_video_name
from cliptool.analysis.words.subtitles import SIDECAR_SUFFIXES
from cliptool.models.spec import ModelSpec
from cliptool.store import IndexStore, VideoRecord, real_path

SETTLE = 2.0  # seconds a file's size and mtime must stay the same before it is indexed
DEBOUNCE = 0.5  # seconds of quiet after the last change before an index run
FALLBACK_POLL = 30.0  # seconds between rescans where file events are unavailable
BUSY_RETRY = 5.0  # seconds between tries while another process holds the index
TICK = 0.2  # how often pending files are looked at
# File systems whose changes made on other machines raise no event on this one.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "9p", "virtiofs", "davfs",
    "glusterfs", "ceph", "lustre", "gpfs", "beegfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.glusterfs", "fuse.cephfs", "fuse.davfs2", "fuse.juicefs",
})

Say = Callable[[str], None]
_MOVED_OR_REMOVED = re.compile(r"^(moved .+ -> .+|removed .+ \(file is gone\))$", re.DOTALL)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Pending:
    """A video file seen appearing or changing, not yet settled."""

    size: int
    mtime: float
    since: float  # monotonic time this size and mtime were first seen


def network_filesystem(path: Path, mounts: str = "/proc/self/mounts") -> str | None:
    """The type of the file system `path` lies on when it is a network one (None otherwise, and
    where the mount table cannot be read: Linux only)."""
    try:
        table = Path(mounts).read_text()
    except OSError:
        return None
    real = real_path(path)
    best, kind = "", ""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def describe_changes(before: dict[str, VideoRecord], after: dict[str, VideoRecord],
                     moves: Collection[str] = ()) -> list[str]:
    """One line per video an index run added, updated, moved or removed, from the records
    before and after it. A record gone and a new one with its content are a move when the run
    said it moved it (its line "moved OLD -> NEW" is in `moves`: no decoding), else a removal
    and an addition."""
    gone = {vid: rec for vid, rec in before.items() if vid not in after}
    sources: dict[tuple[str, int], list[VideoRecord]] = {}
    for rec in gone.values():
        sources.setdefault((rec.fingerprint, rec.size), []).append(rec)
    lines = []
    for vid, rec in sorted(after.items(), key=lambda item: item[1].path):
        old = before.get(vid)
        if old is None:
            candidates = sources.get((rec.fingerprint, rec.size), [])
            src = next((c for c in candidates if f"moved {c.path} -> {rec.path}" in moves), None)
            if src is not None:
                candidates.remove(src)
                gone.pop(src.video_id, None)
                lines.append(f"moved {printable(src.path)} -> {printable(rec.path)}")
            else:
                lines.append(f"added {printable(rec.path)} ({_scenes(rec.scene_count)})")
        elif old.indexed_at != rec.indexed_at:
            lines.append(f"updated {printable(rec.path)} ({_scenes(rec.scene_count)})")
    lines += [f"removed {printable(rec.path)}" for rec in sorted(gone.values(), key=lambda r: r.path)]
    return lines


def _scenes(n: int) -> str:
    return f"{n} scene{'' if n == 1 else 's'}"


class _Source(threading.Thread):
    """watchfiles over some roots, on its own thread: each batch of changes goes on `out` (a
    message to say, or an error that ends the watch, goes there too). `period`: seconds between
    rescans, None for file events; where those fail (and `fallback`), rescans every
    FALLBACK_POLL seconds instead."""

    def __init__(self, roots: list[Path], out: queue.Queue[object], period: float | None, debounce: float,
                 fallback: bool, note: str = "") -> None:
        super().__init__(name="cliptool-watch-events", daemon=True)
        self.roots, self.out, self.period, self.debounce, self.fallback = roots, out, period, debounce, fallback
        self.note = note  # why it rescans, when it does by itself
        self.stop = threading.Event()
        self.ready = threading.Event()  # watching (or given up): changes from now on are seen

    def run(self) -> None:
        try:
            self._watch(self.period)
        except Exception as exc:  # noqa: BLE001 - rescans instead, or the watch ends with it
            if self.period is not None or not self.fallback:
                self.out.put(CliptoolError(f"cannot watch {_names(self.roots)}: {one_line(exc)}"))
                return
            self.period, self.note = FALLBACK_POLL, f"file events unavailable ({one_line(exc)})"
            if self.ready.is_set():  # they failed on the way: said now (else in the first line)
                self.out.put(f"file events stopped for {_names(self.roots)} ({one_line(exc)}); "
                             f"rescanning every {FALLBACK_POLL:g} s instead")
            try:
                self._watch(FALLBACK_POLL)
            except Exception as again:  # noqa: BLE001
                self.out.put(CliptoolError(f"cannot watch {_names(self.roots)}: {one_line(again)}"))
        finally:
            self.ready.set()

    def describe(self) -> str:
        how = "file events" if self.period is None else f"rescanning every {self.period:g} s"
        return how + (f": {self.note}" if self.note else "")

    def _watch(self, poll: float | None) -> None:
        import watchfiles

        for changes in watchfiles.watch(
            *self.roots, watch_filter=None, debounce=max(50, int(self.debounce * 1000)), step=50,
            stop_event=self.stop, rust_timeout=200, yield_on_timeout=True, raise_interrupt=False,
            force_polling=poll is not None, poll_delay_ms=int((poll or 0.3) * 1000), ignore_permission_denied=True,
        ):
            self.ready.set()  # the first yield (a timeout, at the latest): the watch is in place
            if changes:
                self.out.put(changes)


def _names(roots: Iterable[Path]) -> str:
    return ", ".join(printable(str(r)) for r in roots)


class Watcher:
    """Keeps the index at `index_dir` in step with `paths` (video files or folders) until
    stopped; see the module docstring. `spec`: the model (None: the index's, else the default)."""

    def __init__(self, paths: Iterable[Path], index_dir: Path, spec: ModelSpec | None = None, *,
                 precision: str | None = None, settle: float = SETTLE, debounce: float = DEBOUNCE,
                 poll: float | None = None, file_timeout: float = DEFAULT_FILE_TIMEOUT, say: Say = _stderr,
                 progress: bool | None = None, prune: bool | None = None) -> None:
        if settle < 0:
            raise UsageError("--settle must not be negative")
        if debounce < 0:
            raise UsageError("debounce must not be negative")
        if poll is not None and poll <= 0:
            raise UsageError("--poll must be a positive number of seconds")
        self.paths = [Path(p).expanduser() for p in paths]
        if not self.paths:
            raise UsageError("nothing to watch: give a folder or a video file")
        for p in self.paths:
            if not p.exists():
                raise UsageError(f"no such file or folder: {p}")
        self.roots = sorted({Path(real_path(p)) for p in self.paths})
        self.index_dir = Path(index_dir).expanduser()
        self._index_real = real_path(self.index_dir)
        self.spec, self.precision, self.file_timeout, self.progress = spec, precision, file_timeout, progress
        self.prune = prune  # as index_paths takes it: None keeps videos of a folder that looks unmounted
        self.settle, self.debounce, self.poll, self.say = settle, debounce, poll, say
        self.pending: dict[str, _Pending] = {}
        self.dirty = False
        self.changed_at = 0.0  # monotonic time of the last change that made the index dirty
        self.retry_at = 0.0
        self.runs = 0  # index runs done (the first one catches up)
        self._events: queue.Queue[object] = queue.Queue()
        self._sources: list[_Source] = []
        self._said: set[str] = set()
        self._moves: set[str] = set()  # the current run's "moved OLD -> NEW" lines
        self._busy = False

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, stopped: Callable[[], bool] | None = None) -> None:
        """Watches until `stopped()` is true, or Ctrl-C (KeyboardInterrupt, on the main thread:
        then a commit under way completes first). Raises CliptoolError for what ends it."""
        try:
            how = self._start()
            self.dirty, self.changed_at = True, float("-inf")  # the catch-up run, at once
            announced = False
            while not (stopped is not None and stopped()):
                now = time.monotonic()
                if self.dirty and now - self.changed_at >= self.debounce and now >= self.retry_at:
                    self._index()
                    if self.runs and not announced:
                        announced = True
                        self.say(f"watching {_names(self.roots)} ({how}); a file is indexed once unchanged for "
                                 f"{self.settle:g} s; Ctrl-C stops")
                self._take(TICK)
                self._settle(time.monotonic())
        finally:
            for source in self._sources:
                source.stop.set()
            for source in self._sources:
                source.join(timeout=2)

    def _start(self) -> str:
        """Starts watching (file events, or rescans) and waits until it is in place; says how."""
        groups: dict[str | None, list[Path]] = {}  # network file system (None: local) -> roots on it
        for root in self.roots:
            groups.setdefault(network_filesystem(root) if self.poll is None else None, []).append(root)
        for kind, roots in groups.items():
            period = self.poll if self.poll is not None else (FALLBACK_POLL if kind else None)
            note = f"{kind}, a network file system" if kind else ""
            self._sources.append(_Source(roots, self._events, period, self.debounce, self.poll is None, note))
        for source in self._sources:
            source.start()
        for source in self._sources:
            source.ready.wait(30)
        if len(self._sources) == 1:
            return self._sources[0].describe()
        return "; ".join(f"{_names(s.roots)}: {s.describe()}" for s in self._sources)

    def _take(self, timeout: float) -> None:
        """Waits up to `timeout` for changes, then takes every one queued."""
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, str):
                self.say(item)
            else:
                now = time.monotonic()
                for change, path in item:  # type: ignore[attr-defined]
                    self._note(int(change), path, now)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return

    # -- changes ----------------------------------------------------------------------------------
    def _note(self, change: int, path: str, now: float) -> None:
        """One file event (watchfiles' Change: 1 added, 2 modified, 3 deleted)."""
        if self._ignored(path):
            return
        if change == 3:  # a file or folder deleted, or moved away
            self.pending.pop(path, None)
            self._mark(now)
            return
        try:
            st = os.stat(path)
        except OSError:  # gone again already
            if self.pending.pop(path, None) is not None:
                self._mark(now)
            return
        if stat.S_ISREG(st.st_mode):
            if is_video_name(Path(path)):
                self._observe(path, st, now)
            elif Path(path).suffix.lower() in SIDECAR_SUFFIXES:  # a subtitle file: the run re-reads its video's words
                self._mark(now)
        elif stat.S_ISDIR(st.st_mode) and change == 1:  # a folder made or moved in: the run looks inside
            self._mark(now)

    def _ignored(self, path: str) -> bool:
        """Changes inside the index itself, or hidden files and folders (the run skips those)."""
        index = self._index_real
        if path == index or path.startswith(index.rstrip(os.sep) + os.sep):
            return True
        for root in self.roots:
            top = str(root)
            if path.startswith(top.rstrip(os.sep) + os.sep):
                return any(part.startswith(".") for part in Path(path[len(top):].lstrip(os.sep)).parts)
        return False

    def _observe(self, path: str, st: os.stat_result, now: float) -> None:
        """A video file appeared or changed: pending, unless it appeared whole (renamed or moved
        in: last written longer ago than the settle time), which the next run takes at once (a
        rename is then one run, and a move)."""
        old = self.pending.get(path)
        if old is None and time.time() - st.st_mtime >= self.settle:
            self._mark(now)
            return
        if old is None or (old.size, old.mtime) != (st.st_size, st.st_mtime):
            self.pending[path] = _Pending(st.st_size, st.st_mtime, now)

    def _mark(self, now: float) -> None:
        self.dirty = True
        self.changed_at = now

    def _settle(self, now: float) -> None:
        """Pending files that stayed the same for the settle time (or vanished) are due."""
        for path, seen in list(self.pending.items()):
            try:
                st = os.stat(path)
            except OSError:
                del self.pending[path]
                self._mark(now)
                continue
            if (st.st_size, st.st_mtime) != (seen.size, seen.mtime):
                self.pending[path] = _Pending(st.st_size, st.st_mtime, now)
            elif now - seen.since >= self.settle:
                del self.pending[path]
                self._mark(now)

    def _hold(self, path: Path, st: os.stat_result) -> bool:
        """Whether an index run leaves this file for later: pending, or written moments ago
        (a copy that began before its first event arrived); the latter becomes pending."""
        key = str(path)
        if key in self.pending:
            return True
        if 0 <= time.time() - st.st_mtime < self.settle:
            self.pending[key] = _Pending(st.st_size, st.st_mtime, time.monotonic())
            return True
        return False

    # -- index runs -------------------------------------------------------------------------------
    def _index(self) -> bool:
        """One index run over the watched paths, its changes said one per line; False when
        another process holds the index (tried again later)."""
        self.dirty = False
        self._moves.clear()
        paths = self._present()
        try:
            before = self._records()
            index_paths(paths, self.index_dir, self.spec, report=self._report, progress=self.progress,
                        file_timeout=self.file_timeout, precision=self.precision, prune=self.prune, hold=self._hold)
        except IndexBusyError as exc:
            self.dirty, self.retry_at = True, time.monotonic() + BUSY_RETRY
            if not self._busy:
                self.say(f"{exc}; trying again every {BUSY_RETRY:g} s")
            self._busy = True
            return False
        except NothingToDoError:
            pass  # no video under the folders (yet)
        self._busy = False
        self.runs += 1
        for line in describe_changes(before, self._records(), self._moves):
            self.say(line)
        return True

    def _present(self) -> list[Path]:
        """The watched paths still there (one that is gone is said once; its videos stay indexed,
        as `index` keeps those of a folder that looks unmounted)."""
        present = [p for p in self.paths if os.path.lexists(p)]
        for p in self.paths:
            if p not in present and str(p) not in self._said:
                self._said.add(str(p))
                self.say(f"{printable(str(p))} is gone: no longer watched (its indexed videos are kept)")
        if not present:
            raise CliptoolError(f"nothing left to watch: {_names(self.paths)} gone")
        return present

    def _records(self) -> dict[str, VideoRecord]:
        if not IndexStore(self.index_dir).exists():
            return {}
        with IndexStore(self.index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            return {v.video_id: v for v in store.videos()}

    def _report(self, message: str) -> None:
        """The run's own messages: its moved and removed lines are said from the records instead,
        failures it does not retry only by the first run, and notes it repeats each run once."""
        if _MOVED_OR_REMOVED.match(message):
            self._moves.add(message)
            return
        if self.runs and message.endswith("(unchanged since it failed; not retried)"):
            return
        if not message.startswith("warning: failed"):
            if message in self._said:
                return
            self._said.add(message)
        self.say(message)


__all__ = ["DEBOUNCE", "FALLBACK_POLL", "SETTLE", "Watcher", "describe_changes", "network_filesystem"]
