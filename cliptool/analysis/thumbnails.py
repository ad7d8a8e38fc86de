"""Small JPEG pictures of each scene's sample frames: derived data kept in the index directory.

Layout: ``INDEX_DIR/thumbnails/<video id>/<version>/<scene number>-<sample number>.jpg``, one
file per sample frame (in `SceneRecord.sample_times` order), about `WIDTH` px wide. They are
derived data like the FAISS cache: the stores never point at them, deleting them costs only
their re-creation, and `cliptool check` reports missing or extra ones as harmless (`--repair`
deletes the extra ones). They are written by the index run at commit, from the sample frames it
decoded anyway, and by `cliptool serve` on first request for an index made before (decoded from
the video at the sample time). Every write goes to a temporary name first and is renamed into
place, so a reader never sees half a picture. Each file ends, after the JPEG's end marker
(where decoders stop reading), with `CHECK_MAGIC` and 8 bytes of blake2b of the picture:
`read` serves only a picture that matches it (else it is made again, said on stderr), and
`check` counts the ones that do not (`damaged`).

The paths come from a scene id that was looked up in the store, never from a request as such.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cliptool.store import SceneRecord, VideoRecord

THUMB_DIR = "thumbnails"
WIDTH = 320
QUALITY = 80
_PART = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def root(index_dir: Path) -> Path:
    return Path(index_dir) / THUMB_DIR


def _parts(scene_id: str) -> tuple[str, str, str]:
    parts = scene_id.split("/")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        raise ValueError(f"not a scene id: {scene_id!r}")
    return parts[0], parts[1], parts[2]


def path_for(index_dir: Path, scene_id: str, sample: int) -> Path:
    """Where the thumbnail of a scene's `sample`-th sample frame lives."""
    video, version, number = _parts(scene_id)
    if sample < 0:
        raise ValueError("negative sample number")
    return root(index_dir) / video / version / f"{number}-{int(sample)}.jpg"


def encode(rgb: np.ndarray, width: int = WIDTH, quality: int = QUALITY) -> bytes:
    """A JPEG of an RGB frame, scaled down to `width` px (never up)."""
    import cv2

    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode a thumbnail")
    return buf.tobytes()


CHECK_MAGIC = b"CTck"
_CHECK_BYTES = 8


def _sum(picture: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(picture, digest_size=_CHECK_BYTES).digest()


def with_check(picture: bytes) -> bytes:
    """A JPEG with its checksum trailer (as the files are written)."""
    return picture + CHECK_MAGIC + _sum(picture)


def verified(data: bytes) -> bytes | None:
    """The JPEG of a thumbnail file whose checksum matches; a file written before checksums
    passes when it ends as a JPEG does; None for a damaged one."""
    tail = len(CHECK_MAGIC) + _CHECK_BYTES
    if len(data) > tail and data[-tail:-_CHECK_BYTES] == CHECK_MAGIC:
        picture = data[:-tail]
        return picture if _sum(picture) == data[-_CHECK_BYTES:] else None
    return data if data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9") else None


def write_atomic(path: Path, data: bytes) -> None:
    """Writes a thumbnail through a temporary file beside it, synced before and after it is
    renamed into place (a reader never sees half a file, nor a crash an empty one)."""
    write_all([(path, data)])


def write_all(items: list[tuple[Path, bytes]]) -> None:
    """write_atomic for many thumbnails: each synced, then renamed, then each folder synced once."""
    from cliptool import durable

    for folder in sorted({path.parent for path, _ in items}):
        durable.make_dirs(folder)
    durable.write_many([(path, with_check(data)) for path, data in items])


def write_scene_thumbnails(index_dir: Path, record: VideoRecord, scenes: list[SceneRecord],
                           pictures: list[list[bytes]] | None) -> int:
    """Writes the JPEGs an analysis pass made (per scene, one per sample frame) under the
    committed record's version, and drops the pictures of the video's older versions.
    Returns how many were written; a failure to write is not an error (they are made on
    request later)."""
    written = 0
    if pictures:
        try:
            items = [(path_for(index_dir, scene.scene_id, k), data) for scene, jpegs in zip(scenes, pictures)
                     for k, data in enumerate(jpegs or []) if data]
            write_all(items)
            written = len(items)
        except (OSError, ValueError):
            pass
    drop_other_versions(index_dir, record)
    return written


def drop_other_versions(index_dir: Path, record: VideoRecord) -> None:
    """Deletes the thumbnails of a video's versions other than the record's."""
    folder = root(index_dir) / record.video_id
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name != record.version:
            shutil.rmtree(entry, ignore_errors=True)


def read(index_dir: Path, scene_id: str, sample: int) -> bytes | None:
    """The JPEG of a sample's thumbnail; None when there is none, or it fails its checksum (said
    on stderr: it is made again)."""
    import sys

    try:
        data = path_for(index_dir, scene_id, sample).read_bytes()
    except OSError:
        return None
    picture = verified(data)
    if picture is None:
        print(f"cliptool: thumbnail {scene_id} #{sample} was damaged (it fails its checksum); made again",
              file=sys.stderr)
    return picture


def damaged(index_dir: Path, records: Iterable[VideoRecord]) -> list[Path]:
    """The thumbnail files of the records' versions that fail their checksum (`check` reads
    each file there is; missing ones are `survey`'s)."""
    found = []
    for record in records:
        try:
            files = sorted((root(index_dir) / record.video_id / record.version).iterdir())
        except OSError:
            continue
        for path in files:
            try:
                if path.suffix == ".jpg" and verified(path.read_bytes()) is None:
                    found.append(path)
            except OSError:
                continue
    return found


def make(index_dir: Path, record: VideoRecord, scene: SceneRecord, sample: int, *, cache: bool = True) -> bytes:
    """The thumbnail of a sample frame: from the index directory, else decoded from the video at
    the sample's time (and, with cache, kept there). Raises UsageError/VideoError when the video
    cannot give that frame (gone, unreadable)."""
    data = read(index_dir, scene.scene_id, sample)
    if data is not None:
        return data
    from cliptool.media.decode import frame_at

    _, rgb = frame_at(Path(record.path), float(scene.sample_times[sample]))
    data = encode(rgb)
    if cache:
        try:
            write_atomic(path_for(index_dir, scene.scene_id, sample), data)
        except OSError:
            pass  # a read-only index: served, not kept
    return data


def survey(index_dir: Path, records: Iterable[VideoRecord], scene_ids: dict[str, list[tuple[str, int]]]) -> tuple[int, list[Path]]:
    """(number of missing thumbnails, folders and files no current scene owns).

    scene_ids maps a video id to its (scene id, number of samples) list."""
    base = root(index_dir)
    live = {(r.video_id, r.version) for r in records}
    extra: list[Path] = []
    try:
        videos = list(base.iterdir())
    except OSError:
        videos = []
    for vdir in videos:
        try:
            versions = list(vdir.iterdir()) if vdir.is_dir() else None
        except OSError:
            versions = None
        if versions is None:
            extra.append(vdir)
            continue
        for ver in versions:
            if (vdir.name, ver.name) not in live:
                extra.append(ver)
    missing = 0
    for vid, scenes in scene_ids.items():
        for sid, n in scenes:
            for k in range(n):
                try:
                    if not path_for(index_dir, sid, k).is_file():
                        missing += 1
                except ValueError:
                    missing += 1
    return missing, extra


def delete(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass


__all__ = ["CHECK_MAGIC", "THUMB_DIR", "WIDTH", "damaged", "delete", "drop_other_versions", "encode", "make", "path_for", "read",
           "survey", "verified", "with_check", "write_all", "write_atomic", "write_scene_thumbnails"]
