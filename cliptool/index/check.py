"""`cliptool check`: do the three stores and the FAISS cache agree? `repair` fixes what can be
fixed without decoding anything again."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.errors import CliptoolError, IndexMissingError, one_line, printable
from cliptool.store import (
    IndexStore,
    StoreDamagedError,
    VideoRecord,
    WriterLock,
    decode_vectors,
    repair_store,
    scene_id,
    store_damage,
)

# Kinds of problem: "orphan" (scene lists or vectors no record names: left by an interrupted
# write, harmless), "video" (a record whose scene list or vectors are missing or malformed),
# "cache" (the FAISS cache is corrupt or disagrees with the stores), "failure" (a malformed
# failure note), "identity" (a video filed under another spelling of its path: `..`, a symbolic
# link, or an index made before ids came from real paths; a second such record is a duplicate),
# "collection" (the Milvus collection recorded in the index is missing, damaged or out of step).
# "store" (a store's files fail LevelDB's checksums: repair keeps what is readable), "thumbnail"
# (thumbnails that fail their checksum: repair deletes them, they are made again on request).
ORPHAN, VIDEO, CACHE, FAILURE, IDENTITY = "orphan", "video", "cache", "failure", "identity"
COLLECTION, STORE, THUMBNAIL = "collection", "store", "thumbnail"

NORM_TOLERANCE = 1e-3  # a stored vector's length is 1 within this


@dataclass
class Problem:
    """One thing wrong with the index, in words."""

    kind: str
    message: str
    video_id: str = ""
    repaired: bool = False


@dataclass
class CheckReport:
    """The outcome of a check (and repair)."""

    index_dir: str
    videos: int = 0
    scenes: int = 0
    cache: str = "missing"  # missing, current, stale
    collection: str = ""  # the recorded Milvus collection: missing, current, stale ("": none recorded)
    problems: list[Problem] = field(default_factory=list)
    # derived pictures (thumbnails/): missing ones are made on request, extra ones (of scenes no
    # longer indexed) only take space; neither is a problem. {"missing", "extra", "deleted"}
    thumbnails: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # paths of the damaged videos repair removed
    reanalysed: list[str] = field(default_factory=list)  # ... and those analysed again from their files

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_dir": self.index_dir, "ok": self.ok, "videos": self.videos, "scenes": self.scenes,
            "cache": self.cache, **({"collection": self.collection} if self.collection else {}),
            "thumbnails": self.thumbnails, "removed": self.removed, "reanalysed": self.reanalysed,
            "problems": [{**asdict(p), "message": printable(p.message)} for p in self.problems],
        }


def _video_problems(store: IndexStore, video: VideoRecord, dims: set[int]) -> list[str]:
    """What is wrong with one video's scene list and vectors ([] when it is whole)."""
    try:
        raw = store.raw_scene_list(video)
    except StoreDamagedError:
        return [f"{video.path}: its scene list fails its checksum"]
    if raw is None:
        return [f"{video.path}: its scene list is missing"]
    try:
        scenes = json.loads(raw)
        ids = [s["scene_id"] for s in scenes]
        indices = [s["index"] for s in scenes]
    except (ValueError, KeyError, TypeError):
        return [f"{video.path}: its scene list is malformed"]
    wrong: list[str] = []
    if len(scenes) != video.scene_count:
        wrong.append(f"{video.path}: {len(scenes)} scenes stored, its record says {video.scene_count}")
    if indices != list(range(len(scenes))) or ids != [scene_id(video.video_id, video.version, i) for i in indices]:
        wrong.append(f"{video.path}: its scene list is out of order or names other scenes")
    wrong += _time_problems(video, scenes)
    wrong += _words_problems(store, video)
    keys = []
    try:
        records = list(store.vector_records(video))
    except StoreDamagedError:
        return wrong + [f"{video.path}: its vectors fail their checksum"]
    for key, value in records:
        keys.append(key)
        try:
            vec = decode_vectors(value)
        except (ValueError, Exception):  # noqa: BLE001 - struct errors too
            wrong.append(f"{video.path}: vector record {key} is malformed")
            continue
        dims.add(vec.scene.shape[0])
        if not np.all(np.isfinite(vec.scene)) or not np.all(np.isfinite(vec.frames)):
            wrong.append(f"{video.path}: vector record {key} holds NaN or infinity")
        elif not _unit(vec.scene) or not _unit(vec.frames):
            wrong.append(f"{video.path}: vector record {key} holds a vector whose length is not 1")
    if keys != ids:
        missing = len(set(ids) - set(keys))
        extra = len(set(keys) - set(ids))
        wrong.append(f"{video.path}: {missing} scene vector(s) missing, {extra} unexpected")
    return wrong


def _words_problems(store: IndexStore, video: VideoRecord) -> list[str]:
    """What is wrong with the words list a video's record names ([] when whole or none)."""
    if not video.words:
        return []
    try:
        if store.raw_words(video) is None:
            return [f"{video.path}: its words are missing"]
        store.words(video)
    except StoreDamagedError:
        return [f"{video.path}: its words fail their checksum or are malformed"]
    return []


def _unit(vectors: np.ndarray) -> bool:
    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64).reshape(-1, vectors.shape[-1]), axis=1)
    return bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE))


def _time_problems(video: VideoRecord, scenes: list[dict[str, Any]]) -> list[str]:
    """Scene times out of order, or outside the video (what no checksum covers)."""
    # generous: a container's duration may fall a little short of its decoded frames
    slack = max(1.0, 0.02 * max(video.duration, 0.0), 2.0 / video.fps if video.fps > 0 else 0.0)
    end_of_video = video.duration + slack if video.duration > 0 else float("inf")
    last_start = 0.0
    try:
        for s in scenes:
            start, end = float(s["start_time"]), float(s["end_time"])
            samples = [float(t) for t in s.get("sample_times", [])]
            if not (0.0 <= start < end <= end_of_video and start >= last_start - slack):
                return [f"{video.path}: scene {s['index']} spans {start:g}-{end:g} s, out of order or outside "
                        f"the video's {video.duration:g} s"]
            if samples != sorted(samples) or any(not start - slack <= t <= end + slack for t in samples):
                return [f"{video.path}: scene {s['index']}'s sample times are out of order or outside the scene"]
            last_start = start
    except (KeyError, TypeError, ValueError):
        return [f"{video.path}: its scene list is malformed"]
    return []


def _check_stores(index_dir: Path, report: CheckReport, repair: bool) -> None:
    """LevelDB's own checks of every store file (paranoid open, every block's checksum); with
    repair, LevelDB's repair keeps what is readable (what was lost then shows as damaged or
    orphaned videos, which the rest of the check names and repairs)."""
    from cliptool.vectors.faiss import read_manifest

    for name, why in store_damage(index_dir).items():
        problem = Problem(STORE, f"the {name} store is damaged ({why})")
        report.problems.append(problem)
        if repair:
            repair_store(index_dir, name)
            problem.repaired = name not in store_damage(index_dir)
            if name == "videos" and problem.repaired:
                _restore_model(index_dir, read_manifest(index_dir))


def _lost_records(index_dir: Path, scene_keys: list[bytes], repair: bool) -> list[Problem]:
    """The videos whose records a damaged block of the videos store took (their scene lists are
    orphans now), named by the search cache where it still lists them."""
    from cliptool.vectors.faiss import cached_video_paths

    paths = cached_video_paths(index_dir)
    lost = sorted({key.decode(errors="replace").split("/")[1] for key in scene_keys if key.count(b"/") >= 2})
    return [Problem(VIDEO, f"{paths.get(vid, 'video ' + vid)}: its record was in a damaged block of the videos store"
                    + ("; removed, the next `cliptool index` adds it again" if repair else ""), vid, repaired=repair)
            for vid in lost]


def _restore_model(index_dir: Path, manifest: dict[str, Any] | None) -> None:
    """The index's model record, should the videos store's repair have dropped it: from the
    search cache's manifest, which names the same model."""
    with IndexStore(index_dir) as store:
        if store.meta() or not manifest or not manifest.get("model_identity"):
            return
        store.bind_model(manifest["model_identity"], manifest["model"])


def check_index(index_dir: Path, repair: bool = False, take_lock: bool = True) -> CheckReport:
    """Checks that the stores and the FAISS cache agree; with repair, fixes what it can.

    Repair deletes orphans, removes a video whose scene list or vectors are damaged (the next
    `cliptool index` redoes it) and rebuilds a corrupt or disagreeing cache. Holds the writer
    lock (an index run in progress would look like orphans), unless take_lock is False.
    """
    index_dir = Path(index_dir)
    if take_lock:
        with _try_lock(index_dir):
            return check_index(index_dir, repair, take_lock=False)
    report = CheckReport(str(index_dir))
    if not IndexStore(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir} yet; run `cliptool index FOLDER` first")
    _check_stores(index_dir, report, repair)
    try:  # with a store still damaged, as far as its readable records go: each damaged video named
        _check_stored(index_dir, report, repair)
    except StoreDamagedError as exc:
        report.problems.append(Problem(STORE, one_line(exc)))
    except CliptoolError as exc:
        if not any(p.kind == STORE and not p.repaired for p in report.problems):
            raise
        report.problems.append(Problem(STORE, one_line(exc)))  # the stores cannot be opened at all
    return report


def _check_stored(index_dir: Path, report: CheckReport, repair: bool) -> None:
    """check_index once the store files are whole: the stores' contents, thumbnails, the cache."""
    from cliptool.vectors.faiss import cache_problems, cache_state, rebuild, sync_cache

    with IndexStore(index_dir) as store:
        records = list(store.videos())
        report.videos = len(records)
        dims: set[int] = set()
        damaged: list[VideoRecord] = []
        expected: dict[str, np.ndarray] = {}
        for video in records:
            wrong = _video_problems(store, video, dims)
            if wrong:
                damaged.append(video)
                report.problems += [Problem(VIDEO, w, video.video_id) for w in wrong]
                continue
            report.scenes += video.scene_count
            for key, value in store.vector_records(video):
                expected[key] = decode_vectors(value).scene
        if len(dims) > 1:
            report.problems.append(Problem(VIDEO, f"vectors of {len(dims)} different sizes {sorted(dims)}: "
                                           "videos embedded by different models"))
        scene_keys, vector_keys = store.orphans()
        damaged_ids = {v.video_id for v in damaged}
        n_orphans = len(scene_keys) + len(vector_keys)
        if n_orphans:
            report.problems.append(Problem(
                ORPHAN, f"{len(scene_keys)} scene list(s) and {len(vector_keys)} vector record(s) belong to no video "
                "(left by an interrupted run)"))
        if n_orphans and any(p.kind == STORE and "videos store" in p.message for p in report.problems):
            report.problems += _lost_records(index_dir, scene_keys, repair)
        for vid, note in _raw_failures(store):
            if note is None:
                report.problems.append(Problem(FAILURE, f"failure note {vid} is malformed", vid))
        misfiled = [(rec, real) for rec, real in store.misfiled() if rec.video_id not in damaged_ids]
        misfiled_ids = {rec.video_id for rec, _ in misfiled}
        holders = Counter([real for _, real in misfiled] + [r.path for r in records if r.video_id not in misfiled_ids])
        for rec, real in misfiled:
            twice = holders[real] > 1
            report.problems.append(Problem(IDENTITY, f"{rec.path}: {'a duplicate of' if twice else 'filed under another spelling of'} "
                                           f"{real}", rec.video_id))
        if repair:
            for rec, real in misfiled:
                store.refile(rec, real)
            for video in damaged:
                store.delete_video(video.video_id)
            report.removed = [video.path for video in damaged]
            store.recover(full=True)
            bad_notes = [vid for vid, note in _raw_failures(store) if note is None]
            for vid in bad_notes:
                store.delete_failure(vid)
            for p in report.problems:
                if p.kind in (ORPHAN, FAILURE, IDENTITY) or (p.kind == VIDEO and p.video_id in damaged_ids):
                    p.repaired = True
            if misfiled:
                records = list(store.videos())
                expected = {key: decode_vectors(value).scene for r in records for key, value in store.vector_records(r)}
                report.videos = len(records)
                report.scenes = sum(r.scene_count for r in records)
    records = [r for r in records if r.video_id not in damaged_ids]
    _check_thumbnails(index_dir, report, records, repair)
    report.cache = cache_state(index_dir)  # "stale" is no problem: a search adds what is newer
    for w in cache_problems(index_dir, expected, records, stale=report.cache == "stale"):  # a damaged manifest too
        report.problems.append(Problem(CACHE, w))
    if repair and (damaged or misfiled or any(p.kind == CACHE for p in report.problems) or report.cache != "current"):
        try:  # a cache that disagrees is built again; one that only lags is caught up (appended)
            if any(p.kind == CACHE for p in report.problems) or report.cache == "missing":
                rebuild(index_dir)
            else:
                sync_cache(index_dir)
            report.cache = "current"
            for p in report.problems:
                if p.kind == CACHE:
                    p.repaired = True
        except CliptoolError:
            pass  # no videos left: nothing to cache
        except OSError as exc:
            report.problems.append(Problem(CACHE, f"could not rebuild the search cache: {exc.strerror or exc}"))
    _check_collection(index_dir, report, records, repair)  # a Milvus collection recorded in the index
    _check_text_export(index_dir, report, repair)
    _check_fulltext(index_dir, report, repair)


def _check_text_export(index_dir: Path, report: CheckReport, repair: bool) -> None:
    """The text tower export against the checksums its marker records; repair removes a damaged
    one (searches use open_clip until the next index run writes it again)."""
    from cliptool.models.clip import TEXTENC_MARKER, remove_text_export, text_encoder_identity, text_export_damage

    identity = text_encoder_identity(index_dir)
    if identity is None and not (index_dir / TEXTENC_MARKER).exists():
        return
    damage = text_export_damage(index_dir) if identity is not None else f"{TEXTENC_MARKER} is unreadable"
    if damage is not None:
        report.problems.append(Problem(CACHE, f"{damage}; removed, the next index run writes it again"
                                       if repair else damage, repaired=repair))
        if repair:
            remove_text_export(index_dir)


def _check_fulltext(index_dir: Path, report: CheckReport, repair: bool) -> None:
    """`check`: the full-text cache (words.sqlite) missing, damaged or disagreeing with the
    stores as they are now (kind "cache"); with repair, built again from the stores (one that
    only lags is caught up)."""
    import sqlite3

    from cliptool.vectors.fulltext import fulltext_problems, fulltext_state, sync_fulltext

    with IndexStore(index_dir) as store:
        records = list(store.videos())
    found = [Problem(CACHE, message) for message in fulltext_problems(index_dir, records)]
    report.problems += found
    if repair and (found or fulltext_state(index_dir) != "current"):
        try:
            sync_fulltext(index_dir, rebuild=bool(found))
            for p in found:
                p.repaired = True
        except (CliptoolError, OSError, sqlite3.Error) as exc:
            report.problems.append(Problem(CACHE, f"could not rebuild the full-text cache: {one_line(exc)}"))


def _check_collection(index_dir: Path, report: CheckReport, records: list[VideoRecord], repair: bool) -> None:
    """`check`: how the recorded Milvus collection differs from the stores (a problem of kind
    "collection"); with repair, it is rebuilt from the stores. Nothing when none is recorded."""
    from cliptool.vectors.milvus import (collection_problems, collection_state, parse_vector_store, recorded_vector_store,
                                         release, sync_collection)

    text = recorded_vector_store(index_dir)
    target = parse_vector_store(text, index_dir) if text else None
    if target is None:
        return
    try:
        report.collection = collection_state(index_dir, target)
        found = collection_problems(index_dir, target, records)
        if report.collection == "stale" and not found:
            found = ["the Milvus collection lags the stores (a search catches it up)"]
        report.problems += [Problem(COLLECTION, message) for message in found]
        if repair and found:
            if records:
                sync_collection(index_dir, target, rebuild=True)
                report.collection = "current"
            for p in report.problems:
                if p.kind == COLLECTION:
                    p.repaired = True
    except CliptoolError as exc:
        report.problems.append(Problem(COLLECTION, one_line(exc)))
    finally:
        if target.lite:
            release(target)


def _check_thumbnails(index_dir: Path, report: CheckReport, records: list[VideoRecord], repair: bool) -> None:
    """Counts missing and extra thumbnails (harmless either way); repair deletes the extra ones."""
    from cliptool.analysis import thumbnails

    with IndexStore(index_dir) as store:
        scene_ids = {r.video_id: [(s.scene_id, len(s.sample_times)) for s in store.scenes(r)] for r in records}
    missing, extra = thumbnails.survey(index_dir, records, scene_ids)
    damaged = thumbnails.damaged(index_dir, records)
    report.thumbnails = {"missing": missing, "extra": len(extra), "deleted": 0}
    if damaged:
        report.thumbnails["damaged"] = len(damaged)
        report.problems.append(Problem(THUMBNAIL, f"{len(damaged)} thumbnail(s) fail their checksum, e.g. "
                                       f"{damaged[0].relative_to(index_dir)} (made again on request once deleted)",
                                       repaired=repair))
    if repair and (extra or damaged):
        thumbnails.delete(extra + damaged)
        report.thumbnails["deleted"] = len(extra) + len(damaged)


def _raw_failures(store: IndexStore) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = []
    for vid, raw in store.raw_failures():
        try:
            note = json.loads(raw)
            ok = isinstance(note, dict) and "path" in note
        except ValueError:
            ok = False
        out.append((vid, note if ok else None))
    return out


class _try_lock:
    """The writer lock, when the index exists: an index run in progress makes a check an error."""

    def __init__(self, index_dir: Path) -> None:
        self._lock = WriterLock(index_dir)

    def __enter__(self) -> None:
        if self._lock.path.parent.is_dir():
            self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


__all__ = ["CheckReport", "Problem", "check_index"]
