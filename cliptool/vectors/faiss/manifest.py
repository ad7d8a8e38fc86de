"""The cache's manifest (`CURRENT`): which segments make the cache, the rows each has retired,
the store generation it matches; replaced atomically, one builder at a time under build.lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliptool import durable
from cliptool.errors import IndexBusyError
from cliptool.store import generation
from cliptool.vectors.faiss.segment import VectorIndex

CACHE_DIR = "faiss"


BUILD_LOCK_TIMEOUT = 600.0  # seconds a process waits for another one's cache build


MANIFEST_FORMAT = 3  # 3: the manifest carries its own checksum ("sum") and each segment's files' ("files")


# -- the manifest ---------------------------------------------------------------------------------
def cache_root(index_dir: Path) -> Path:
    return Path(index_dir) / CACHE_DIR


def read_manifest(index_dir: Path, damage: list[str] | None = None) -> dict[str, Any] | None:
    """The live cache's manifest (segments, retired videos, generation), None when there is none
    or it is damaged (then why is added to `damage`: a search rebuilds, `check` reports it).

    An older cache's CURRENT names one build; it reads as a manifest of that one segment."""
    root = cache_root(index_dir)
    try:
        raw = (root / "CURRENT").read_bytes()
    except OSError:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = "{"  # damaged: said below
    if not text:
        return None
    if text.startswith("{"):
        try:
            manifest = json.loads(text)
            whole = isinstance(manifest, dict) and manifest.get("segments")
            if whole and ("sum" in manifest or int(manifest.get("format", 0)) >= 3):
                claimed = manifest.pop("sum", None)
                whole = claimed == durable.digest_bytes(json.dumps(manifest, separators=(",", ":")).encode())
        except (ValueError, TypeError, AttributeError):
            whole = False
        if not whole:
            if damage is not None:
                damage.append("the search cache's manifest (faiss/CURRENT) fails its checksum")
            return None
        return manifest
    try:
        meta = json.loads((root / text / "meta.json").read_text())
    except (OSError, ValueError):
        if damage is not None:
            damage.append("the search cache's manifest (faiss/CURRENT) names no segment")
        return None
    return {"format": 1, "generation": meta.get("generation"), "model": meta.get("model"),
            "model_identity": meta.get("model_identity"), "dim": meta.get("dim"),
            "segments": [{"name": text, "rows": meta.get("scenes", 0), "retired": [], "dead": 0}]}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replaces CURRENT atomically and durably (written aside and synced, renamed, folder
    synced): call only once every segment it names is synced (`durable.sync_tree`)."""
    body = {k: v for k, v in manifest.items() if k != "sum"}
    text = json.dumps(body, separators=(",", ":"))
    durable.write_text(root / "CURRENT", json.dumps({**body, "sum": durable.digest_bytes(text.encode())},
                                                    separators=(",", ":")))


def current_build(index_dir: Path) -> Path | None:
    """The folder of the live cache's first (base) segment, None when there is none."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return None
    path = cache_root(index_dir) / manifest["segments"][0]["name"]
    return path if (path / "meta.json").exists() else None


def cache_state(index_dir: Path) -> str:
    """"missing", "current" (in line with the stores as they are) or "stale"."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return "missing"
    return "current" if manifest.get("generation") == generation(index_dir) else "stale"


def video_rows(seg: VectorIndex) -> list[int]:
    """Rows of each video of a segment, in the order of its videos list."""
    if all("rows" in v for v in seg.videos):
        return [int(v["rows"]) for v in seg.videos]
    if not seg.videos:
        return []
    return np.bincount(np.asarray(seg._table["video_row"], dtype=np.int64), minlength=len(seg.videos)).tolist()


def live_map(manifest: dict[str, Any], segments: list[VectorIndex]) -> dict[str, tuple[str, str, int, int]]:
    """video id -> (version, path, segment number, its row in that segment's videos) of every
    video the cache holds and has not retired."""
    live: dict[str, tuple[str, str, int, int]] = {}
    for i, (entry, seg) in enumerate(zip(manifest["segments"], segments)):
        retired = set(entry.get("retired", ()))
        for vrow, v in enumerate(seg.videos):
            if vrow not in retired:
                live[v["video_id"]] = (v.get("version", ""), v["path"], i, vrow)
    return live


def retired_mask(entry: dict[str, Any], seg: VectorIndex) -> np.ndarray | None:
    retired = entry.get("retired") or []
    return seg.rows_of_video_rows(retired) if retired else None


class BuildLock:
    """One cache build or update at a time per index (flock: freed on any exit)."""

    def __init__(self, root: Path, timeout: float = BUILD_LOCK_TIMEOUT) -> None:
        self.path = root / "build.lock"
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        durable.make_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise IndexBusyError(f"another process has been building the search cache at {self.path.parent} "
                                         f"for over {self.timeout:g} s; try again") from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def remove_unlisted(root: Path, keep: set[str]) -> None:
    """Deletes every segment no manifest names, and leftovers of interrupted builds. Called only
    by the holder of the build lock, so no other build is in progress; a search that still
    reads a removed segment keeps its open files."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith("CURRENT.") and entry.name.endswith(".tmp"):
            try:
                entry.unlink()
            except OSError:
                pass
