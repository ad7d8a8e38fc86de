"""An index run: discover -> plan (skip, move, remove) -> analyse each changed video -> store ->
append it to the FAISS cache (vector_index.sync_cache, after each commit).

Incremental: a file whose size and mtime match its record is skipped without reading it; one
whose mtime changed but whose content fingerprint did not gets its record refreshed. An unchanged
video whose words are out of date (a sidecar subtitle file added, changed or removed, or other
`--words` settings) gets its words read again and committed alone (`store.put_words`), its
scenes and vectors untouched. A new
path whose size and fingerprint match a record whose file is gone is a move: the stored scenes
and vectors are carried over to the new path (no decoding). Records of files that are gone from
the folders indexed in this run are removed. Files that failed to decode are remembered with
their size and mtime and not retried until they change.

A file reached through a symbolic link is stored once, under its real path, and its record keeps
the link's path: when a later run walks the link's folder and the link is gone (or leads
elsewhere), the record loses it, and a record left with no link, never found at its own path,
is removed although its file is still there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptool.config import IndexOptions, settings_difference, usable_cores
from cliptool.media.discover import discover_spellings
from cliptool.models.clip import ClipModel, fast_text_unavailable, text_export_due, threads_settled_on_error
from cliptool.models.common import file_fingerprint
from cliptool.models.spec import ModelSpec
from cliptool.errors import CliptoolError, ModelUnavailableError, NothingToDoError, printable
from cliptool.store import IndexStore, VideoRecord, WriterLock, generation, real_path, video_id_for
from cliptool.analysis.thumbnails import write_scene_thumbnails
from cliptool.index.progress import RunProgress
from cliptool.index.worker import (DEFAULT_FILE_TIMEOUT, Reporter, FileResult, Todo,
                                   Watchdog, analyse_file, file_words)
from cliptool.analysis.words.extract import check_engines, words_key


WRITER_LOCK_TIMEOUT = 120.0  # how long a writer waits for a reader to let go of the stores

# A file an index run finds but leaves for a later run (one still being written, say): given its
# path and stat, True holds it back. It is neither analysed nor counted as gone.
Hold = Callable[[Path, os.stat_result], bool]


@dataclass
class IndexSummary:
    """What an index run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    kept_missing: int = 0  # gone files kept because their folder looked unmounted (or --no-prune)
    kept_settings: int = 0  # unchanged videos left as analysed with other settings (--reindex redoes them)
    scenes: int = 0
    seconds: float = 0.0
    video_seconds: float = 0.0
    workers: int = 0  # processes that analysed videos: 1 locally, the Ray actors that took part with --ray
    retried: int = 0  # videos analysed again after a Ray worker or node died under them
    words: int = 0  # unchanged videos whose words alone were read again (sidecars or --words changed)

    def to_dict(self) -> dict[str, object]:
        return {
            "added": self.added, "updated": self.updated, "moved": self.moved, "removed": self.removed,
            "skipped": self.skipped, "kept_missing": self.kept_missing, "kept_settings": self.kept_settings,
            "failed": [{"path": printable(p), "error": printable(e)} for p, e in self.failed],
            "scenes": self.scenes, "seconds": round(self.seconds, 3),
            "video_seconds": round(self.video_seconds, 3), "workers": self.workers, "retried": self.retried,
            "words": self.words,
        }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def resolve_model_spec(index_dir: Path, spec: ModelSpec | None) -> ModelSpec:
    """The model to use: the given one, else the one the index was built with, else the default.

    Given the model the index was built with, it keeps the index's precision (a default changed
    between versions must not turn an existing index into a mismatch).
    """
    recorded = None
    store = IndexStore(index_dir)
    if store.exists():
        with store:
            meta = store.meta().get("model")
        if meta:
            recorded = ModelSpec.from_record(meta)
    if spec is not None:
        spec = spec.check_files().resolved()
        return recorded if recorded is not None and recorded.same_model(spec) else spec
    return recorded or ModelSpec().resolved()


# -- planning --------------------------------------------------------------------------------------
def _under(path: str, root: Path, root_is_dir: bool) -> bool:
    """Whether `path` is `root` or lies under it; give both as real paths (one spelling per file)."""
    if not root_is_dir:
        return path == str(root)
    prefix = str(root).rstrip(os.sep) + os.sep
    return path.startswith(prefix)


def _gone(path: str) -> bool:
    """True only when the file is certainly absent (not for permission or I/O errors)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _safe_fingerprint(path: Path) -> str | None:
    try:
        return file_fingerprint(path)
    except OSError:
        return None


@dataclass
class _Plan:
    """What an index run will do, decided before anything is decoded."""

    todo: Todo = field(default_factory=list)  # (path, stat, its old record) to decode and embed
    refresh: list[VideoRecord] = field(default_factory=list)  # touched, not changed: new mtime only
    moves: list[tuple[Path, os.stat_result, VideoRecord]] = field(default_factory=list)
    removals: list[VideoRecord] = field(default_factory=list)
    stale_failures: list[str] = field(default_factory=list)  # notes of failed files that are gone
    kept_settings: list[VideoRecord] = field(default_factory=list)  # unchanged, made with other settings
    links: dict[str, list[str]] = field(default_factory=dict)  # real path found -> its record's links
    words: list[tuple[Path, VideoRecord]] = field(default_factory=list)  # unchanged, words out of date

    def writes(self) -> bool:
        return bool(self.refresh or self.moves or self.removals or self.stale_failures)


def index_paths(
    paths: Iterable[Path],
    index_dir: Path,
    spec: ModelSpec | None = None,
    options: IndexOptions | None = None,
    report: Reporter = _stderr,
    progress: bool | None = None,
    prune: bool | None = None,
    file_timeout: float = DEFAULT_FILE_TIMEOUT,
    precision: str | None = None,
    ray: str | None = None,
    settings: dict[str, Any] | None = None,
    reindex: bool = False,
    hold: Hold | None = None,
) -> IndexSummary:
    """Indexes every video under `paths` into the index at `index_dir`; see the module docstring.

    options: the analysis settings; None takes the index's recorded ones (those of the last run
    that chose them), else the defaults; `settings` changes some of them (IndexOptions field ->
    value). A run that chooses settings records them. An unchanged video analysed with other
    settings is kept as it is and counted in `kept_settings` (said once); reindex analyses every
    video found again, with this run's settings.

    ray: a Ray cluster's address ("auto", "ray://HOST:PORT" or a GCS "HOST:PORT"): the plan is
    made here, the videos are analysed by a pool of Ray actors (see cluster.py), and each result
    is committed here exactly as a local run commits it.

    prune: None removes records of files gone from the indexed folders, except under a folder
    that now holds no videos at all (an unmounted disk looks like that); True removes those
    too; False removes nothing. Each video is committed on its own, so an interruption loses
    at most the one being processed.

    hold: files found that this run leaves alone, neither analysed nor taken for gone (the
    watcher holds back a copy still in progress; see watch.py).
    """
    index_dir = Path(index_dir)
    args = (paths, index_dir, spec, options, report, progress, prune, file_timeout, precision, ray, settings or {},
            reindex, hold)
    fresh, before = not IndexStore(index_dir).exists(), _entries(index_dir)
    try:
        if ray is None:
            return _index_run(*args)
        from cliptool.index.cluster import connection

        with connection(ray):  # joined first: no Ray, or no cluster there, is said before any work
            return _index_run(*args)
    except BaseException:
        if fresh:
            _undo_empty_index(index_dir, before)
        raise


def _entries(folder: Path) -> set[str] | None:
    """The names in a folder (None when it does not exist)."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return None


def _undo_empty_index(index_dir: Path, before: set[str] | None) -> None:
    """After a first run into a new index failed or was cut short: when it committed nothing (no
    video, no remembered failure), what it created is removed, so that the next command says
    there is no index yet instead of taking an empty one for real. A folder the user had is
    kept, with whatever it held before; a run of another process in the meantime keeps it all."""
    import shutil

    try:
        with WriterLock(index_dir):
            if IndexStore(index_dir).exists():
                with IndexStore(index_dir) as store:
                    if next(iter(store.videos()), None) is not None or store.failures():
                        return
            for name in (_entries(index_dir) or set()) - (before or set()) - {"index.lock"}:
                target = index_dir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        if before is None or "index.lock" not in before:
            (index_dir / "index.lock").unlink(missing_ok=True)
        if before is None:
            index_dir.rmdir()
    except (CliptoolError, OSError):
        pass  # busy, or not ours to clean: left as it is


def _index_run(paths: Iterable[Path], index_dir: Path, spec: ModelSpec | None, options: IndexOptions | None,
               report: Reporter, progress: bool | None, prune: bool | None, file_timeout: float,
               precision: str | None, ray: str | None, settings: dict[str, Any], reindex: bool,
               hold: Hold | None = None) -> IndexSummary:
    """The body of `index_paths`."""
    from tqdm import tqdm

    started = time.monotonic()
    paths = [Path(p).expanduser() for p in paths]
    found = list(discover_spellings(paths))
    files = list(dict.fromkeys(real for _, real in found))  # each file once, as discover_videos gives them
    roots = [(Path(real_path(p)), p.is_dir()) for p in paths]
    summary = IndexSummary()
    index_dir = Path(index_dir)
    with WriterLock(index_dir):
        spec = resolve_model_spec(index_dir, spec)
        if precision:  # image tower int8, bf16 or fp32; part of the model identity
            spec = ModelSpec(spec.name, spec.pretrained, precision)
        identity = spec.identity()
        with IndexStore(index_dir, create=True, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            store.check_model(identity)
            store.recover()
            misfiled = store.misfiled()
            for record, real in misfiled:  # one record per file, however its path was spelled
                outcome = store.refile(record, real)
                report(f"{'removed duplicate' if outcome == 'duplicate' else 'refiled'} {record.path} -> {real}")
            known = {v.video_id: v for v in store.videos()}
            failures = store.failures()
            recorded = store.settings()
            chosen = options is not None or any(v is not None for v in settings.values())
            base = options or (IndexOptions.from_settings(recorded) if recorded else IndexOptions())
            options = base.changed(settings)
            check_engines(options)  # a words source with no engine here: one line, before any work or record
            if chosen:
                store.record_settings({**options.settings(), **options.words_settings()})
        if known and not _cache_current(index_dir):  # a cache left behind (a crash, say): caught up
            _sync(index_dir, None, None, report)
        plan = _classify(files, known, failures, identity, summary, report, options.settings_key(), reindex, hold,
                         options)
        if plan.kept_settings:
            report(f"{len(plan.kept_settings)} unchanged video(s) keep the settings they were indexed with "
                   f"({settings_difference(plan.kept_settings[0].settings, options)}): `cliptool index --reindex "
                   f"PATH` analyses them again with this run's")
        file_ids = {video_id_for(f) for f in files}
        gone = {vid: rec for vid, rec in known.items() if vid not in file_ids and _gone(rec.path)}
        _match_moves(plan, gone, identity)
        _plan_removals(plan, gone, failures, roots, files, file_ids, prune, summary)
        _plan_links(plan, known, gone, found, roots, files, prune)
        if plan.writes():
            _apply(plan, index_dir, known, summary, report)
        if summary.kept_missing:
            why = "--no-prune" if prune is False else "its folder holds no videos now (unmounted disk?); --prune removes them"
            report(f"kept {summary.kept_missing} indexed video(s) whose files are missing: {why}")
        if not files and not (summary.removed or summary.moved):
            raise NothingToDoError("no video files found in " + ", ".join(str(p) for p in paths))

        changed_store = bool(misfiled) or plan.writes()
        if plan.words:  # sidecars or word settings changed: the words alone, no decoding of pictures
            changed_store |= _redo_words(plan.words, index_dir, options, summary, report)
        if plan.todo:  # decode, detect, sample and embed what is new or changed
            with threads_settled_on_error():
                model = ClipModel(spec, threads=max(1, usable_cores() // 2))  # the decoder has the rest
                changed_store |= _analyse_with(model, plan.todo, index_dir, identity, options, summary, report,
                                               progress, file_timeout, tqdm, ray, plan.links)
        elif known and text_export_due(index_dir, identity) and fast_text_unavailable(spec) is None:
            with threads_settled_on_error():  # nothing to embed, but the text export is behind (older than int8)
                ClipModel(spec).export_text_encoder(index_dir, report=report)
        if (changed_store or known) and not _cache_current(index_dir):  # each commit was appended; this
            _sync(index_dir, None, None, report)  # only catches up what an earlier failure left out
        else:
            from cliptool.vectors.milvus import sync_recorded

            sync_recorded(index_dir, None, None, report)  # a Milvus collection behind the stores: caught up
        _sync_words(index_dir, report)
    summary.seconds = time.monotonic() - started
    return summary


def _classify(files: list[Path], known: dict[str, VideoRecord], failures: dict[str, dict[str, Any]], identity: str,
              summary: IndexSummary, report: Reporter, settings: str = "", reindex: bool = False,
              hold: Hold | None = None, options: IndexOptions | None = None) -> _Plan:
    """Step 1: which files found are unchanged, only touched, or to be (re)indexed (all of them
    with `reindex`); unchanged ones made with other settings than `settings` are listed, and
    those whose words are out of date (`options`' word settings, sidecar files); those `hold`
    holds back are left as they are."""
    plan = _Plan()
    listings: dict[Path, list[str]] = {}  # each folder listed once, for its sidecar files
    for path in files:
        vid = video_id_for(path)
        old = known.get(vid)
        try:
            st = path.stat()
        except OSError as exc:
            _fail(summary, report, path, exc.strerror or str(exc))
            continue
        if hold is not None and hold(path, st):
            continue
        if reindex:
            plan.todo.append((path, st, old))
            continue
        if old and old.model == identity and old.size == st.st_size:
            unchanged = old.mtime == st.st_mtime
            if not unchanged and _safe_fingerprint(path) == old.fingerprint:  # touched, not changed
                old.mtime = st.st_mtime
                plan.refresh.append(old)
                unchanged = True
            if unchanged:
                summary.skipped += 1
                if old.settings and settings and old.settings != settings:
                    plan.kept_settings.append(old)
                    summary.kept_settings += 1
                if options is not None and old.words_key != words_key(path, options, _listing(listings, path)):
                    plan.words.append((path, old))
                continue
        if st.st_size == 0 and old is None:  # nothing to decode (checked each run: it costs nothing)
            _fail(summary, report, path, "empty file (0 bytes)")
            continue
        fail = failures.get(vid)
        if old is None and fail and fail.get("size") == st.st_size and fail.get("mtime") == st.st_mtime:
            _fail(summary, report, path, f"{fail.get('error')} (unchanged since it failed; not retried)")
            continue
        plan.todo.append((path, st, old))
    return plan


def _listing(listings: dict[Path, list[str]], path: Path) -> list[str]:
    """The names in `path`'s folder, listed once per run."""
    if path.parent not in listings:
        try:
            listings[path.parent] = os.listdir(path.parent)
        except OSError:
            listings[path.parent] = []
    return listings[path.parent]


def _redo_words(todo: list[tuple[Path, VideoRecord]], index_dir: Path, options: IndexOptions,
                summary: IndexSummary, report: Reporter) -> bool:
    """Reads the words of unchanged videos again and commits each alone (its scenes and vectors
    stay as they are); returns whether the stores changed."""
    changed = False
    for path, old in todo:
        with IndexStore(index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            scenes = store.scenes(old)
        words, key, error = file_words(path, options, [t for s in scenes for t in s.sample_times],
                                       duration=scenes[-1].end_time if scenes else None)
        if error:
            report(f"warning: words of {path}: {error}")
        if words is None:
            continue
        since = generation(index_dir)
        with IndexStore(index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            current = store.get_video(old.video_id)
            if current is None or current.version != old.version:
                continue  # changed meanwhile (another process): left to it
            store.put_words(old.video_id, words, key)
        changed = True
        summary.words += 1
        _sync(index_dir, [old.video_id], since, report)
    return changed


def _match_moves(plan: _Plan, gone: dict[str, VideoRecord], identity: str) -> None:
    """Step 2: a new or changed path whose content matches a record whose file is gone is a move."""
    by_size: dict[int, list[VideoRecord]] = {}
    for rec in gone.values():
        if rec.model == identity:
            by_size.setdefault(rec.size, []).append(rec)
    remaining: Todo = []
    for path, st, old in plan.todo:
        candidates = by_size.get(st.st_size)
        fp = _safe_fingerprint(path) if candidates else None
        match = next((r for r in candidates or [] if fp is not None and r.fingerprint == fp), None)
        if match is not None:
            candidates.remove(match)  # type: ignore[union-attr]
            plan.moves.append((path, st, match))
        else:
            remaining.append((path, st, old))
    plan.todo = remaining


def _plan_removals(plan: _Plan, gone: dict[str, VideoRecord], failures: dict[str, dict[str, Any]],
                   roots: list[tuple[Path, bool]], files: list[Path], file_ids: set[str], prune: bool | None,
                   summary: IndexSummary) -> None:
    """Step 3: records of files gone from the folders indexed now (not from other disks).

    `roots` and `files` are real paths; a record's path is resolved here (an older index may
    have stored another spelling of it)."""
    moved_ids = {rec.video_id for _, _, rec in plan.moves}
    empty: dict[Path, bool] = {}  # folder -> holds no video now (an unmounted disk looks like that)
    for rec in gone.values():
        if rec.video_id in moved_ids:
            continue
        path = real_path(rec.path)
        root = next(((r, d) for r, d in roots if _under(path, r, d)), None)
        if root is None:
            continue  # not under this run's folders: another disk, maybe not mounted now
        if root[1] and root[0] not in empty:
            empty[root[0]] = not any(_under(str(f), root[0], True) for f in files)
        if prune is False or (prune is None and empty.get(root[0], False)):
            summary.kept_missing += 1
            continue
        plan.removals.append(rec)
    plan.stale_failures = [vid for vid, f in failures.items()
                           if vid not in file_ids and any(_under(real_path(str(f.get("path"))), r, d) for r, d in roots)
                           and _gone(str(f.get("path")))]


def _leads_to(spelling: str, real: str) -> bool:
    """Whether a path still leads to the file at `real` (True when it cannot be told)."""
    try:
        os.stat(spelling)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return os.path.realpath(spelling) == real


def _plan_links(plan: _Plan, known: dict[str, VideoRecord], gone: dict[str, VideoRecord],
                found: list[tuple[Path, Path]], roots: list[tuple[Path, bool]], files: list[Path],
                prune: bool | None) -> None:
    """Step 4: the links each record keeps (VideoRecord.links). A link under this run's folders
    that no longer leads to its file is dropped (not under --no-prune, nor under a folder that
    holds no videos now, unless --prune); a record left with no link that was never found at its
    own path is removed, whether or not its file is still there. Records whose links change are
    rewritten; plan.links gets the links of every file found, for the records to come."""
    spelt: dict[str, set[str]] = {}
    for spelling, real in found:
        spelt.setdefault(str(real), set()).add(str(spelling))
    live = [] if prune is False else [(r, d) for r, d in roots if prune or not d
                                       or any(_under(str(f), r, True) for f in files)]

    def after(rec: VideoRecord | None, real: str) -> list[str] | None:
        before = set(rec.links) if rec is not None and rec.links else ({rec.path} if rec is not None else set())
        kept = {s for s in before if s == real or not any(_under(s, r, d) for r, d in live) or _leads_to(s, real)}
        now = kept | spelt.get(real, set())
        return None if not now else [] if now == {real} else sorted(now)

    plan.links = links = {real: after(known.get(video_id_for(real)), real) or [] for real in spelt}
    busy = {id(old) for _, _, old in plan.todo} | {id(rec) for _, _, rec in plan.moves} | {id(r) for r in plan.removals}
    refreshed = {rec.video_id for rec in plan.refresh}
    for vid, rec in known.items():
        if id(rec) in busy or not (rec.links or rec.path in spelt):
            continue
        new = links[rec.path] if rec.path in spelt else after(rec, rec.path)
        if new is None:
            plan.removals.append(rec)
        elif new != rec.links and vid not in gone:
            rec.links = new
            if vid not in refreshed:
                plan.refresh.append(rec)


def _apply(plan: _Plan, index_dir: Path, known: dict[str, VideoRecord], summary: IndexSummary, report: Reporter) -> None:
    """Writes the plan's refreshes, moves and removals (no decoding), then appends them to the
    search cache."""
    since = generation(index_dir)
    touched: list[str] = []
    try:
        with IndexStore(index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            _apply_to(store, plan, known, summary, report, touched)
    finally:
        _sync(index_dir, touched, since, report)


def _apply_to(store: IndexStore, plan: _Plan, known: dict[str, VideoRecord], summary: IndexSummary,
              report: Reporter, touched: list[str]) -> None:
    """The store writes of `_apply`; the ids of the videos they touch go into `touched`."""
    for rec in plan.refresh:
        store.put_record(rec)
        touched.append(rec.video_id)
    for path, st, src in plan.moves:
        record = VideoRecord(**{**src.__dict__, "video_id": video_id_for(path), "path": str(path),
                                "size": st.st_size, "mtime": st.st_mtime, "indexed_at": time.time(),
                                "links": plan.links.get(str(path), [])})
        touched += [src.video_id, record.video_id]
        try:
            store.move_video(src.video_id, record)
        except ValueError:  # its stored scenes are incomplete: index the file afresh
            store.delete_video(src.video_id)
            plan.todo.append((path, st, known.get(video_id_for(path))))
            continue
        summary.moved += 1
        report(f"moved {src.path} -> {path}")
    for rec in plan.removals:
        touched.append(rec.video_id)
        store.delete_video(rec.video_id)
        summary.removed += 1
        report(f"removed {rec.path} ({'file is gone' if _gone(rec.path) else 'no link to it is left'})")
    for vid in plan.stale_failures:
        store.delete_failure(vid)


def _sync(index_dir: Path, video_ids: list[str] | None, since: str | None, report: Reporter) -> None:
    """Appends what was just committed (these videos; None: whatever differs) to the search
    cache. A failure here loses nothing: a search lays what the cache lacks over it, and the
    next run or `check --repair` catches it up."""
    from cliptool.vectors.milvus import sync_recorded
    from cliptool.vectors.faiss import sync_cache

    try:
        sync_cache(index_dir, video_ids, since=since, report=report)
    except CliptoolError:
        pass  # nothing indexed yet (search will say so), or another process holds the cache build
    except OSError as exc:
        report(f"warning: could not update the search cache ({exc.strerror or exc}); search will catch up")
    sync_recorded(index_dir, video_ids, since, report)  # a Milvus collection recorded in the index, if any
    _sync_words(index_dir, report, video_ids, since)


def _sync_words(index_dir: Path, report: Reporter, video_ids: list[str] | None = None,
                since: str | None = None) -> None:
    """Brings the full-text cache in line with the stores (comparing only `video_ids` when it
    was current at `since`); a failure loses nothing (the next search or run catches it up)."""
    import sqlite3

    from cliptool.vectors.fulltext import sync_fulltext

    try:
        sync_fulltext(index_dir, video_ids=video_ids, since=since)
    except CliptoolError:
        pass
    except (OSError, sqlite3.Error, ValueError) as exc:  # full disk, locked or odd data: derived, caught up later
        report(f"warning: could not update the full-text cache ({getattr(exc, 'strerror', None) or exc}); "
               "search will catch up")


def _cache_current(index_dir: Path) -> bool:
    from cliptool.vectors.faiss import cache_state

    return cache_state(index_dir) == "current"


def _changed_since(path: Path, st: os.stat_result) -> bool:
    try:
        now = path.stat()
    except OSError:
        return True
    return (now.st_size, now.st_mtime) != (st.st_size, st.st_mtime)


def _fail(summary: IndexSummary, report: Reporter, path: Path, message: str) -> None:
    summary.failed.append((str(path), message))
    report(f"warning: failed {path}: {message}")


def _local_results(todo: Todo, model: ClipModel, options: IndexOptions, watchdog: Watchdog,
                   bar: RunProgress) -> Iterator[FileResult]:
    """The plan's files analysed one after another in this process."""
    for path, st, old in todo:
        bar.start(path)
        yield analyse_file(path, st, old, model, options, watchdog, on_frame=bar.at, on_note=bar.note)


def _commit_result(result: FileResult, index_dir: Path, identity: str, settings: str, summary: IndexSummary,
                   report: Reporter, links: list[str] | None = None) -> bool:
    """Commits one analysed file (or remembers its failure), whichever process analysed it;
    returns whether the stores changed."""
    if result.fatal is not None:
        raise ModelUnavailableError(result.fatal)
    path, st, old, error, remember = result.path, result.st, result.old, result.error, result.remember
    if error is None and _changed_since(path, st):
        error = "changed while it was being indexed; run index again"
    if error is not None:
        vanished = _gone(str(path))
        if vanished:
            error = "removed while it was being indexed"
        elif _changed_since(path, st):  # a half-written file, say: try again next run
            error, remember = "changed while it was being indexed; run index again", False
        _fail(summary, report, path, error)
        changed = False
        since = generation(index_dir)
        with IndexStore(index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
            if old is not None and (vanished or remember):
                store.delete_video(old.video_id)  # its record described other content
                changed = True
            if remember and not vanished:
                store.put_failure(video_id_for(path), str(path), st.st_size, st.st_mtime, error)
        if old is not None and (vanished or remember):
            _sync(index_dir, [old.video_id], since, report)
        return changed
    analysed = result.analysed
    assert analysed is not None
    record = VideoRecord(
        video_id=video_id_for(path), path=str(path), size=st.st_size, mtime=st.st_mtime,
        fingerprint=result.fingerprint, duration=analysed.duration, fps=analysed.info.fps,
        width=analysed.info.width, height=analysed.info.height, frame_count=analysed.frame_count,
        scene_count=len(analysed.scenes), codec=analysed.info.codec, model=identity,
        indexed_at=time.time(), version="", settings=settings, links=links or [],
    )
    words = result.words
    if words is None:  # unreadable words: none kept, and the next run reads them again
        words, record.words_key = [], ""
    else:
        record.words_key = result.words_key
    if result.words_error:
        report(f"warning: words of {path}: {result.words_error}")
    since = generation(index_dir)
    with IndexStore(index_dir, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
        record = store.put_video(record, analysed.scenes, analysed.vectors, words)
    _sync(index_dir, [record.video_id], since, report)  # its rows appended to the search cache
    # derived data: the sample frames' JPEGs, when the analysis pass made them
    write_scene_thumbnails(index_dir, record, analysed.scenes, getattr(analysed, "thumbnails", None))
    if old is None:
        summary.added += 1
    else:
        summary.updated += 1
    summary.scenes += len(analysed.scenes)
    summary.video_seconds += analysed.duration
    return True


def _analyse_with(
    model: ClipModel,
    todo: Todo,
    index_dir: Path,
    identity: str,
    options: IndexOptions,
    summary: IndexSummary,
    report: Reporter,
    progress: bool | None,
    file_timeout: float,
    tqdm: Any,
    ray: str | None = None,
    links: dict[str, list[str]] | None = None,
) -> bool:
    """Analyses the plan's files, here or (with `ray`, a cluster address) on a Ray cluster, and
    commits each result as it comes, in the order they finish."""
    with IndexStore(index_dir, create=True, lock_timeout=WRITER_LOCK_TIMEOUT) as store:
        store.bind_model(identity, model.spec.to_dict())
    model.link_cached_text_encoder(index_dir)  # searches are fast from the first commit on
    changed = False
    bar = RunProgress([path for path, _, _ in todo], tqdm, progress)  # None: only on a terminal
    workers: set[str] = set()
    with ExitStack() as stack:
        stack.callback(bar.close)
        if ray is None:
            watchdog = stack.enter_context(Watchdog(file_timeout, index_dir, report))
            results = _local_results(todo, model, options, watchdog, bar)
        else:
            from cliptool.index.cluster import RayPool

            pool = stack.enter_context(RayPool(ray, model.spec, options, file_timeout, report))
            bar.note(f"{pool.size} Ray workers")
            results = pool.results(todo)
        for result in results:
            changed |= _commit_result(result, index_dir, identity, options.settings_key(), summary, report,
                                      (links or {}).get(str(result.path)))
            if result.analysed is not None:
                workers.add(result.worker)
            bar.done(result.path)
        if ray is not None:
            summary.retried = pool.retried
    summary.workers = len(workers)
    model.export_text_encoder(index_dir, report=report)  # ONNX text encoder for fast search; raises a model load error
    return changed


__all__ = ["Hold", "IndexSummary", "index_paths", "resolve_model_spec"]
