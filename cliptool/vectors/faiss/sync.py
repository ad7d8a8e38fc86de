"""Keeping the cache in line with the stores: a delta segment per commit, merges as deltas pile
up, compaction into a new base, a rebuild from scratch only when asked."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliptool import durable
from cliptool.errors import IndexMissingError, one_line
from cliptool.store import IndexStore, VideoRecord, generation
from cliptool.vectors.faiss.approx import DELTA_APPROX_MIN_ROWS, approximate
from cliptool.vectors.faiss.manifest import (
    MANIFEST_FORMAT,
    BuildLock,
    cache_root,
    cache_state,
    current_build,
    live_map,
    read_manifest,
    remove_unlisted,
    video_rows,
    write_manifest,
)
from cliptool.vectors.faiss.segment import MERGE_CHUNK, VectorIndex, checksum_files, open_segment
from cliptool.vectors.faiss.writer import FlatWriter, NpyWriter, write_vectors

COMPACT_RETIRED = 0.25  # compaction when retired rows pass this fraction of the cache's rows


COMPACT_DELTAS = 0.25  # ... or the delta segments' rows pass this fraction of the base's


MAX_DELTAS = 24  # delta segments before they are merged, whatever their sizes


Report = Callable[[str], None]


# -- bringing the cache in line with the stores -------------------------------------------------------
@dataclass
class SyncResult:
    """What a `sync_cache` call did."""

    rebuilt: bool = False  # built from the stores (no usable cache, or another model)
    added_rows: int = 0
    retired_rows: int = 0
    merged: int = 0  # segments merged into one
    compacted: bool = False  # everything merged into a new base
    messages: list[str] = field(default_factory=list)
    damaged: str = ""  # what was found damaged (a file failing its checksum), when it was rebuilt for that


def sync_cache(index_dir: Path, video_ids: Iterable[str] | None = None, since: str | None = None,
               report: Report | None = None, rebuild_all: bool = False) -> SyncResult:
    """Brings the cache in line with the stores by appending what changed.

    video_ids: the videos a writer just committed, added, replaced, moved (both ids) or removed;
    only they are compared (the cost is that of the change). `since`: the generation before
    those commits; the cache is marked current only if it was current then. None compares
    every video record with the cache (after a crash, say). rebuild_all builds the cache from
    the stores from scratch. No usable cache, or one of another model, is built from scratch.
    Compaction is reported through `report`.
    """
    index_dir = Path(index_dir)
    root = cache_root(index_dir)
    if not IndexStore(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir} yet; run `cliptool index FOLDER` first")
    with BuildLock(root):
        result = _sync_locked(index_dir, root, None if video_ids is None else list(video_ids), since, rebuild_all)
    for message in result.messages:
        if report is not None:
            report(message)
    return result


def rebuild(index_dir: Path, only_if_stale: bool = False) -> Path:
    """Builds the cache from the stores, from scratch, and makes it current. Returns the folder
    of its segment. With only_if_stale, a cache that became current meanwhile is kept."""
    index_dir = Path(index_dir)
    if only_if_stale and cache_state(index_dir) == "current":
        build = current_build(index_dir)
        if build is not None:
            return build
    sync_cache(index_dir, rebuild_all=True)
    build = current_build(index_dir)
    assert build is not None
    return build


def _sync_locked(index_dir: Path, root: Path, video_ids: list[str] | None, since: str | None,
                 rebuild_all: bool) -> SyncResult:
    result = SyncResult()
    token = generation(index_dir)  # read before the stores: a later commit makes this cache stale
    damage: list[str] = []
    manifest = None if rebuild_all else read_manifest(index_dir, damage)
    if manifest is not None and video_ids is None and manifest.get("generation") == token:
        return result
    segments: list[VectorIndex] = []
    if manifest is not None:
        try:
            segments = [open_segment(root / s["name"], s.get("files")) for s in manifest["segments"]]
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            manifest = None  # damaged: built again from the stores
            damage.append(one_line(exc))
    if damage:
        result.damaged = damage[0]
        result.messages.append(f"{damage[0]}; the search cache is rebuilt from the stores")
    new_segment: tuple[str, int] | None = None
    with IndexStore(index_dir) as store:
        meta = store.meta()
        if manifest is not None and (meta.get("model_identity") != manifest.get("model_identity")
                                     or any(s.video_states() is None for s in segments)):
            manifest = None
        if manifest is None:
            records = sorted(store.videos(), key=lambda v: v.path)
            if not meta or not records:
                _clear(root)
                raise IndexMissingError(f"index at {index_dir} holds no videos yet; run `cliptool index FOLDER`")
            name, rows, dim = _write_segment(store, records, root, meta, None)
            if rows == 0:
                _clear(root, keep=())
                raise IndexMissingError(f"index at {index_dir} holds no scenes yet; run `cliptool index FOLDER`")
            manifest = {"format": MANIFEST_FORMAT, "generation": token, "model": meta["model"],
                        "model_identity": meta["model_identity"], "dim": dim,
                        "segments": [{"name": name, "rows": rows, "retired": [], "dead": 0}]}
            result.rebuilt = True
            result.added_rows = rows
        else:
            live = live_map(manifest, segments)
            if video_ids is None:
                current = {r.video_id: r for r in store.videos()}
                ids = set(current) | set(live)
            else:
                ids = set(video_ids)
                current = {vid: rec for vid in ids if (rec := store.get_video(vid)) is not None}
            changed = sorted((current[v] for v in ids if v in current
                              and live.get(v, ("", "", -1, -1))[:2] != (current[v].version, current[v].path)),
                             key=lambda r: r.path)
            retire = [live[v] for v in ids if v in live and (
                v not in current or live[v][:2] != (current[v].version, current[v].path))]
            if changed:
                new_segment = _write_segment(store, changed, root, meta, manifest.get("dim"))[:2]
            was_current = manifest.get("generation") == (token if video_ids is None else since)
            manifest = {**manifest, "format": MANIFEST_FORMAT, "segments": [dict(s) for s in manifest["segments"]]}
            if video_ids is None or was_current:
                manifest["generation"] = token
            for _, _, seg_no, vrow in retire:
                entry = manifest["segments"][seg_no]
                entry["retired"] = sorted(set(entry.get("retired", [])) | {vrow})
                rows = video_rows(segments[seg_no])[vrow]
                entry["dead"] = int(entry.get("dead", 0)) + rows
                result.retired_rows += rows
            if new_segment is not None:
                manifest["segments"].append({"name": new_segment[0], "rows": new_segment[1], "retired": [], "dead": 0})
                result.added_rows = new_segment[1]
            if len(live) - len(retire) + len(changed) == 0:  # the index holds no video now
                _clear(root)
                return result
    if result.rebuilt:
        approximate(root / manifest["segments"][0]["name"], None)
    else:
        manifest = _merge_as_needed(root, manifest, result)
    for entry in manifest["segments"]:  # new segments, whole: their files' checksums
        if "files" not in entry:
            entry["files"] = checksum_files(root / entry["name"])
    write_manifest(root, manifest)
    remove_unlisted(root, {s["name"] for s in manifest["segments"]})
    return result


def _merge_as_needed(root: Path, manifest: dict[str, Any], result: SyncResult) -> dict[str, Any]:
    """Compaction (all into a new base) when retired rows pass COMPACT_RETIRED or the deltas
    pass COMPACT_DELTAS of the base; else merges of the last delta segments while the newest
    is at least half the size of the one before (a binary counter), or past MAX_DELTAS."""
    entries = manifest["segments"]
    live_rows = [int(e["rows"]) - int(e.get("dead", 0)) for e in entries]
    total = sum(int(e["rows"]) for e in entries)
    dead = sum(int(e.get("dead", 0)) for e in entries)
    if total and (dead > COMPACT_RETIRED * total or sum(live_rows[1:]) > COMPACT_DELTAS * live_rows[0]):
        why = "retired" if dead > COMPACT_RETIRED * total else "deltas"
        if not _room_to_merge(root, entries, result, "compacting"):
            return manifest
        name, rows = _merge(root, manifest, entries, train=True)
        if why == "retired" or rows >= DELTA_APPROX_MIN_ROWS:
            result.messages.append(
                f"compacted the search cache: {len(entries)} segment(s) merged into one of {rows} scenes"
                + (f", {dead} retired rows dropped ({dead / total:.0%} of the cache had been retired)" if dead else ""))
        result.compacted = True
        result.merged = len(entries)
        return {**manifest, "segments": [{"name": name, "rows": rows, "retired": [], "dead": 0}]}
    while len(entries) > 2 and (live_rows[-1] * 2 >= live_rows[-2] or len(entries) - 1 > MAX_DELTAS):
        if not _room_to_merge(root, entries[-2:], result, "merging"):
            break
        name, rows = _merge(root, manifest, entries[-2:], train=False)
        entries = entries[:-2] + [{"name": name, "rows": rows, "retired": [], "dead": 0}]
        live_rows = live_rows[:-2] + [rows]
        result.merged += 2
    return {**manifest, "segments": entries}


MERGE_SPARE_BYTES = 64 << 20  # free space a merge leaves beside its segment (the stores' next writes)


_POSTPONED_SAID: set[tuple[str, str]] = set()


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _room_to_merge(root: Path, entries: list[dict[str, Any]], result: SyncResult, doing: str) -> bool:
    """Whether the disk holds the merge's new segment beside the old ones (their live share of
    their files, plus MERGE_SPARE_BYTES); if not, the merge waits for a later update, said once."""
    need = MERGE_SPARE_BYTES
    for e in entries:
        rows, live = int(e["rows"]), int(e["rows"]) - int(e.get("dead", 0))
        size = sum(f.stat().st_size for f in (root / e["name"]).iterdir() if f.is_file())
        need += size * live // max(rows, 1)
    free = _free_bytes(root)
    if free >= need:
        return True
    if (str(root), doing) in _POSTPONED_SAID:  # once per process: an index run syncs after every commit
        return False
    _POSTPONED_SAID.add((str(root), doing))
    result.messages.append(f"postponed {doing} the search cache ({len(entries)} segments): it needs about "
                           f"{need / 1e9:.1f} GB free beside them, the disk has {free / 1e9:.1f} GB; searches "
                           "are unaffected, and a later run merges them once there is room")
    return False


def _merge(root: Path, manifest: dict[str, Any], entries: list[dict[str, Any]], train: bool) -> tuple[str, int]:
    """Merges segments (their live rows, in order) into a new one; returns its name and rows.
    `train`: the result is a new base and gets its own approximate index when large enough;
    else a large result is encoded with the base's trained quantiser."""
    parts = [(open_segment(root / e["name"], e.get("files")), set(e.get("retired", ()))) for e in entries]
    name, rows = _merge_segments(root, parts, int(manifest["dim"]), manifest)
    base = root / manifest["segments"][0]["name"]
    approximate(root / name, None if train else base)
    return name, rows


def _clear(root: Path, keep: Iterable[str] = ()) -> None:
    """No cache: the stores hold no videos (or scenes)."""
    try:
        (root / "CURRENT").unlink()
    except OSError:
        pass
    if root.is_dir():
        remove_unlisted(root, set(keep))


def _write_segment(store: IndexStore, records: list[VideoRecord], root: Path, meta: dict[str, Any],
                   dim: int | None) -> tuple[str, int, int]:
    """Streams the given videos' vectors from the stores into a new segment; returns its
    name, rows and dimension. Memory stays at one video's vectors plus the row table."""
    name = secrets.token_hex(6)
    durable.make_dirs(root)
    tmp = root / f"tmp-{name}"
    tmp.mkdir()
    try:
        with FlatWriter(tmp / "flat.faiss") as flat, NpyWriter(tmp / "frames.npy") as frames:
            flat.dim = frames.dim = dim
            table, videos = write_vectors(store, records, flat, frames)
        rows, dim = flat.rows, flat.dim or dim or 0
        _finish_segment(tmp, table, videos, meta, rows, dim)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    durable.sync_tree(tmp)
    durable.replace(tmp, root / name)
    return name, rows, dim


def _finish_segment(tmp: Path, table: dict[str, np.ndarray], videos: list[dict[str, Any]], meta: dict[str, Any],
                    rows: int, dim: int) -> None:
    np.savez(tmp / "table.npz", **table)
    (tmp / "videos.json").write_text(json.dumps(videos))
    (tmp / "meta.json").write_text(json.dumps({
        "model": meta["model"], "model_identity": meta["model_identity"], "scenes": rows,
        "videos": len(videos), "dim": dim,
    }))


def _merge_segments(root: Path, parts: list[tuple[VectorIndex, set[int]]], dim: int,
                    meta: dict[str, Any]) -> tuple[str, int]:
    """Writes the live rows of `parts` (segment, its retired video rows) as one new segment,
    streaming vectors in chunks from the segments' memory-mapped files."""
    name = secrets.token_hex(6)
    tmp = root / f"tmp-{name}"
    tmp.mkdir()
    videos: list[dict[str, Any]] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("scene_id", "video_row", "scene_index", "start_time",
                                                          "end_time", "frame_count", "sample_times",
                                                          "continues_shot")}
    try:
        with FlatWriter(tmp / "flat.faiss") as flat, NpyWriter(tmp / "frames.npy") as frames:
            flat.dim = frames.dim = dim
            for seg, retired in parts:
                t = seg._table
                keep_video = np.ones(len(seg.videos), dtype=bool)
                keep_video[sorted(retired)] = False
                renumber = np.cumsum(keep_video) - 1 + len(videos)
                counts_per_video = video_rows(seg)
                videos += [{**v, "rows": counts_per_video[i]} for i, v in enumerate(seg.videos) if keep_video[i]]
                if seg.size == 0:
                    continue
                video_row = np.asarray(t["video_row"], dtype=np.int64)
                keep = keep_video[video_row]
                counts = np.asarray(t["frame_count"], dtype=np.int64)
                offsets = np.asarray(t["frame_offset"], dtype=np.int64)
                frame_keep = np.zeros(len(seg.frames), dtype=bool)
                kept_counts = counts[keep]
                if kept_counts.sum():
                    starts = np.repeat(offsets[keep], kept_counts)
                    within = np.arange(int(kept_counts.sum())) - np.repeat(np.cumsum(kept_counts) - kept_counts, kept_counts)
                    frame_keep[starts + within] = True
                vectors = seg.vectors_view()
                for a in range(0, seg.size, MERGE_CHUNK):
                    m = keep[a : a + MERGE_CHUNK]
                    if m.any():
                        flat.add(np.asarray(vectors[a : a + MERGE_CHUNK])[m])
                for a in range(0, len(seg.frames), MERGE_CHUNK):
                    m = frame_keep[a : a + MERGE_CHUNK]
                    if m.any():
                        frames.add(np.asarray(seg.frames[a : a + MERGE_CHUNK])[m])
                # sample times follow frames.npy's order (frame offsets are ascending by row)
                times = np.asarray(t["sample_times"], dtype=np.float64)
                order = np.argsort(offsets[keep], kind="stable")
                if not np.all(order == np.arange(len(order))):
                    raise ValueError("segment frames are not in row order")
                cols["scene_id"].append(np.asarray(t["scene_id"])[keep])
                cols["video_row"].append(renumber[video_row[keep]].astype(np.int32))
                cols["scene_index"].append(np.asarray(t["scene_index"], dtype=np.int32)[keep])
                cols["start_time"].append(np.asarray(t["start_time"], dtype=np.float64)[keep])
                cols["end_time"].append(np.asarray(t["end_time"], dtype=np.float64)[keep])
                cols["frame_count"].append(kept_counts.astype(np.int32))
                shot = np.asarray(t["continues_shot"], dtype=np.bool_) if "continues_shot" in t.keys() \
                    else np.zeros(seg.size, dtype=np.bool_)  # a segment written before the column
                cols["continues_shot"].append(shot[keep])
                cols["sample_times"].append(times[frame_keep[: len(times)]] if len(times) else times)
        dtypes = {"scene_id": str, "video_row": np.int32, "scene_index": np.int32, "start_time": np.float64,
                  "end_time": np.float64, "frame_count": np.int32, "sample_times": np.float64,
                  "continues_shot": np.bool_}
        table = {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])) for k, v in cols.items()}
        counts = table["frame_count"].astype(np.int64)
        table["frame_offset"] = (np.cumsum(counts) - counts).astype(np.int64)
        rows = flat.rows
        _finish_segment(tmp, table, videos, meta, rows, dim)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    durable.sync_tree(tmp)
    durable.replace(tmp, root / name)
    return name, rows
