"""Writing derived files so that a crash or power loss leaves each one whole, old or new.

The order, everywhere a file is written for a manifest (or a marker) to name: the file is
written under a temporary name beside its final one and synced, renamed into place, and its
folder synced; only then is the manifest written the same way. A folder of new files is
synced file by file and then itself (`sync_tree`) before it is renamed into place. A folder
made here is made durable in its parent (`make_dirs`). Below every other module: it imports
nothing of cliptool.

`digest` is the checksum the manifests record of the files they name (blake2b, 128 bits);
`first_damaged` verifies files against them, once per change of a file (see there).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DIGEST_CHUNK = 1 << 22


def sync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file (its content and size) by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder: the names created, renamed or removed in it become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(path: str | os.PathLike[str]) -> None:
    """Syncs every file under a folder, then every folder, deepest first (the folder itself last)."""
    for here, dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(here, name)
            if not os.path.islink(full):
                sync_file(full)
        sync_dir(here)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """mkdir -p, each folder made here synced into its parent."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        sync_dir(folder.parent)


def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Renames `src` (already synced) over `dst` and syncs the folder (both, when they differ)."""
    os.replace(src, dst)
    sync_dir(Path(dst).parent)
    if Path(src).parent != Path(dst).parent:
        sync_dir(Path(src).parent)


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replaces a file durably: written aside and synced, renamed into place, folder synced."""
    write_many([(Path(path), data)])


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_many(items: Iterable[tuple[Path, bytes]]) -> None:
    """write_bytes for many files: each written aside and synced, all renamed into place, then
    each folder synced once. A failure leaves no temporary file behind."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in items:
            tmp = _temporary(Path(path))
            staged.append((tmp, Path(path)))
            _write_synced(tmp, data)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    for folder in {path.parent for _, path in staged}:
        sync_dir(folder)


VERIFIED_STAMP = ".verified.json"  # a folder's files as last verified: checksum, size, ctime, inode

_VERIFIED: set[tuple[str, str, int, int, int]] = set()  # (path, checksum, size, ctime, inode) verified here


def _state(path: Path, checksum: str) -> list[Any]:
    st = path.stat()
    return [checksum, st.st_size, st.st_ctime_ns, st.st_ino]


def _read_stamp(folder: Path) -> dict[str, list[Any]]:
    import json

    try:
        stamp = json.loads((folder / VERIFIED_STAMP).read_text())
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}


def stamp_verified(folder: str | os.PathLike[str], files: dict[str, str]) -> None:
    """Records files just written with these checksums as verified (best effort)."""
    import json

    folder = Path(folder)
    try:
        stamp = {**_read_stamp(folder), **{name: _state(folder / name, c) for name, c in files.items()}}
        write_text(folder / VERIFIED_STAMP, json.dumps(stamp))
    except OSError:
        pass  # a read-only index: verified again next time


def first_damaged(folder: str | os.PathLike[str], files: dict[str, str], full: bool = False) -> str | None:
    """The first of `files` (name -> checksum) in `folder` whose content differs from its
    checksum (or that cannot be read); None when all match. A file is read only when it changed
    since it was last verified (the folder's stamp records its size, ctime and inode: any write
    through the file system changes its ctime), so a loader pays for it once per change; `full`
    reads every file whatever the stamp says (`check`)."""
    folder = Path(folder)
    stamp = {} if full else _read_stamp(folder)
    verified = {}
    for name, checksum in files.items():
        path = folder / name
        try:
            state = _state(path, checksum)
            if not full and (stamp.get(name) == state or (str(path), *state) in _VERIFIED):
                continue
            if digest(path) != checksum:
                return name
        except OSError:
            return name
        _VERIFIED.add((str(path), *state))
        verified[name] = checksum
    if verified and not full:
        stamp_verified(folder, verified)
    return None


def digest(path: str | os.PathLike[str]) -> str:
    """The checksum of a file's content (blake2b, 16 bytes, hex)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(DIGEST_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.blake2b(data, digest_size=16).hexdigest()


__all__ = ["VERIFIED_STAMP", "digest", "digest_bytes", "first_damaged", "make_dirs", "replace", "sync_dir", "sync_file", "stamp_verified", "sync_tree",
           "write_bytes", "write_many", "write_text"]
