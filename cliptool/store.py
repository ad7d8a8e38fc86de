"""Stage 6: the three LevelDB stores (videos, scenes, embeddings) and their commit protocol.

Layout under the index directory::

    videos.ldb/      video id -> metadata JSON (the commit record), plus !schema and !meta
    scenes.ldb/      video id/version -> ordered scene list JSON; video id/words version -> the
                     video's words (subtitles, speech, screen text) with their times, JSON
    embeddings.ldb/  scene id (video id/version/number) -> scene vector + sample-frame vectors
    generation       token that changes around every commit (readers use it to spot changes)
    index.lock       held by the one `cliptool index` run allowed at a time
    stores.clean     present only while no orphan can exist (see below)

Commit order for one video: embeddings, then scenes, under a fresh version (both synced); then
the videos record that names that version (the commit point, one synced write); then the old
version is deleted. After a crash at any step each video is wholly its old or wholly its new
version; what no record names is an orphan that `recover()` deletes. A video's words have a
version of their own (`VideoRecord.words`), so they can be redone without its pictures
(`put_words`): the words first (synced), then the record naming them, then the old words. A move writes the copy
under the new id the same way and then, in one atomic batch of the videos store, adds the new
record and deletes the old one. Ctrl-C during a commit is held back until the commit is done.
Only a process holding the `WriterLock` may write or call `recover()`.

`stores.clean` spares a large index the orphan scan on every run: a change that could leave
orphans first removes it (durably), and a store that found it, and whose every change went
through, writes it back on close. `recover()` scans only when it is missing (a crash, a failed
change, an index from before it); `check` always scans.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import signal
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliptool import durable
from cliptool.errors import CliptoolError, IndexBusyError, IndexMismatchError, IndexMissingError, one_line

SCHEMA_VERSION = 1
STORE_NAMES = ("videos", "scenes", "embeddings")
_SCHEMA_KEY = b"!schema"
_META_KEY = b"!meta"
_SYNC_KEY = b"!sync"  # deleted with sync=True before stores.clean is written
CLEAN_MARKER = "stores.clean"
_VEC_MAGIC = b"CTV1"
_VEC_HEADER = struct.Struct("<4sHH")  # magic, dim, number of frame vectors


@dataclass
class VideoRecord:
    """Metadata of one indexed video; the record in the videos store."""

    video_id: str
    path: str
    size: int
    mtime: float
    fingerprint: str
    duration: float
    fps: float
    width: int
    height: int
    frame_count: int
    scene_count: int
    codec: str
    model: str  # model identity
    indexed_at: float
    version: str  # which scene list and vectors belong to this record
    settings: str = ""  # the analysis settings it was made with (config.IndexOptions.settings_key; "": before they were kept)
    # the paths through symbolic links that index runs found it by, and its own path too if found
    # there as well; empty: found at its own path only (or made before links were kept)
    links: list[str] = field(default_factory=list)
    words: str = ""  # which words list belongs to this record ("": none stored)
    words_key: str = ""  # what its words were made from (settings, sidecar files); "": words never read

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VideoRecord:
        d = json.loads(raw)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class SceneRecord:
    """One scene: its span in time and frames, and the times of its sample frames."""

    index: int
    start_time: float
    end_time: float
    start_frame: int
    end_frame: int  # exclusive
    sample_times: list[float] = field(default_factory=list)
    sample_frames: list[int] = field(default_factory=list)
    scene_id: str = ""
    continues_shot: bool = False  # a window of a long shot after its first (no cut before it); old records: False


@dataclass
class SceneVectors:
    scene: np.ndarray  # (D,) float32, L2-normalised
    frames: np.ndarray  # (n, D) float32, one per sample frame


def real_path(path: str | os.PathLike[str]) -> str:
    """The one spelling of a file's path: absolute, `~`, `..` and symbolic links resolved."""
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def path_under(path: str, folders: Iterable[str]) -> bool:
    """Whether a real path is one of `folders` (real paths) or lies inside one of them."""
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in folders)


def video_id_for(path: str | os.PathLike[str]) -> str:
    """Stable id of a video: derived from its real path, so every spelling of one file agrees."""
    import hashlib

    return hashlib.blake2b(real_path(path).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def scene_id(video_id: str, version: str, index: int) -> str:
    return f"{video_id}/{version}/{index:05d}"


def encode_vectors(v: SceneVectors) -> bytes:
    scene = np.ascontiguousarray(v.scene, dtype="<f4")
    frames = np.ascontiguousarray(v.frames, dtype="<f4").reshape(-1, scene.shape[0])
    return _VEC_HEADER.pack(_VEC_MAGIC, scene.shape[0], frames.shape[0]) + scene.tobytes() + frames.tobytes()


def decode_vectors(raw: bytes) -> SceneVectors:
    magic, dim, n = _VEC_HEADER.unpack_from(raw)
    if magic != _VEC_MAGIC or len(raw) != _VEC_HEADER.size + 4 * dim * (n + 1):
        raise ValueError("malformed vector record")
    arr = np.frombuffer(raw, dtype="<f4", offset=_VEC_HEADER.size)
    return SceneVectors(arr[:dim].copy(), arr[dim:].reshape(n, dim).copy())


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Holds back SIGINT (Ctrl-C) while a commit runs; raises KeyboardInterrupt after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _error_text(exc: BaseException) -> str:
    """An OSError's or plyvel error's message (plyvel gives LevelDB's as bytes), on one line."""
    arg = exc.args[0] if exc.args else ""
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else (getattr(exc, "strerror", None) or str(exc))
    return one_line(exc, text)


def _write_error(root: Path, exc: BaseException) -> CliptoolError:
    return CliptoolError(f"cannot write to the index at {root}: {_error_text(exc)}")


class StoreDamagedError(CliptoolError):
    """A store's record fails LevelDB's block checksum: `cliptool check --repair` salvages the rest."""


class _Verified:
    """A LevelDB database whose every read verifies LevelDB's block checksums (CRC32C: cheap
    beside decoding); a damaged block is a StoreDamagedError, never data."""

    def __init__(self, db: Any, path: Path) -> None:
        self._raw = db
        self._path = path

    def damaged(self, exc: Exception) -> StoreDamagedError:
        return StoreDamagedError(f"the index's {self._path.name} store is damaged ({_error_text(exc)}); "
                                 "run `cliptool check --repair`")

    def get(self, key: bytes, default: Any = None) -> Any:
        import plyvel

        try:
            return self._raw.get(key, default, verify_checksums=True)
        except (plyvel.CorruptionError, plyvel.IOError) as exc:  # (a table cut short reads as an IOError)
            raise self.damaged(exc) from None

    def iterator(self, **options: Any) -> _VerifiedIterator:
        return _VerifiedIterator(self._raw.iterator(verify_checksums=True, **options), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _VerifiedIterator:
    def __init__(self, it: Any, db: _Verified) -> None:
        self._it = it
        self._db = db

    def __iter__(self) -> _VerifiedIterator:
        return self

    def __next__(self) -> Any:
        import plyvel

        try:
            return next(self._it)
        except (plyvel.CorruptionError, plyvel.IOError) as exc:  # (a table cut short reads as an IOError)
            raise self._db.damaged(exc) from None

    def seek(self, target: bytes) -> None:
        self._it.seek(target)

    def close(self) -> None:
        self._it.close()


def store_damage(root: Path, lock_timeout: float = 30.0) -> dict[str, str]:
    """Each store whose files fail LevelDB's own checks, with LevelDB's words: opened with
    paranoid checks (its logs, MANIFEST and CURRENT), and each table read whole by LevelDB's
    repair with every block's checksum verified, on links to the tables in a folder of its own
    (a damaged block is only skipped by a verifying read, never reported: the repair sets a
    damaged table aside, which is what tells). Empty when all three are whole."""
    import plyvel

    found: dict[str, str] = {}
    for name in STORE_NAMES:
        path = Path(root) / f"{name}.ldb"
        live = _live_tables(path)
        unreadable = _unreadable_tables(live)  # (LevelDB would trust their footers' sizes and abort)
        if unreadable:
            found[name] = f"{', '.join(unreadable)}: its footer or index fails its checksum"
            continue
        damaged = _damaged_tables(path, live)  # before an open, which may compact the tables it finds
        if damaged:
            found[name] = f"{', '.join(damaged)}: a block fails its checksum"
            continue
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                plyvel.DB(str(path), paranoid_checks=True).close()
                break
            except plyvel.Error as exc:
                if not _is_lock_error(exc):
                    found[name] = _error_text(exc)
                    break
                if time.monotonic() >= deadline:
                    raise IndexBusyError(f"index at {root} is held by another process; try again") from None
                time.sleep(0.1)
    return found


def _unreadable_tables(tables: list[Path]) -> list[str]:
    """The names of those tables whose footer or index block is damaged (checked here, in Python)."""
    return sorted(table.name for table in tables if _table_damage(table))


def _damaged_tables(path: Path, tables: list[Path]) -> list[str]:
    """Those tables of a store in which LevelDB's repair finds a damaged block (run on links to
    them, so the store itself is not touched)."""
    import shutil
    import tempfile

    import plyvel

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}-verify-", dir=path.parent))
    try:
        for table in tables:
            try:
                os.link(table, work / table.name)
            except FileNotFoundError:
                continue  # compacted away meanwhile
            except OSError:
                shutil.copy2(table, work / table.name)
        plyvel.repair_db(str(work), paranoid_checks=True)
        lost = work / "lost"
        return sorted(p.name for p in lost.iterdir()) if lost.is_dir() else []
    except plyvel.Error as exc:
        return [f"({_error_text(exc)})"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _live_tables(path: Path) -> list[Path]:
    """The tables a store's current MANIFEST lists (files added, less files deleted): a table a
    killed compaction left half written is no part of the store (LevelDB deletes it at the next
    open). Every table in the folder when the MANIFEST cannot be read (the paranoid open then
    says why)."""
    everything = sorted(path.glob("*.ldb"))
    try:
        manifest = (path / (path / "CURRENT").read_text().strip()).read_bytes()
        live = _manifest_tables(manifest)
    except (OSError, ValueError, IndexError):
        return everything
    return [table for table in everything if table.name in live]


def _manifest_tables(manifest: bytes) -> set[str]:
    """The table names a LevelDB MANIFEST (a log of version edits) leaves live. A record cut
    short at the end (a writer killed while appending) ends the log, as in LevelDB's recovery;
    a record that fails its checksum or an unknown tag raises ValueError."""
    live: set[str] = set()
    for edit in _log_records(manifest):
        at = 0
        while at < len(edit):
            tag, at = _varint(edit, at)
            if tag in (2, 3, 4, 9):  # log number, next file number, last sequence, previous log
                _, at = _varint(edit, at)
            elif tag == 1:  # comparator name
                size, at = _varint(edit, at)
                at += size
            elif tag == 5:  # compaction pointer: level, key
                _, at = _varint(edit, at)
                size, at = _varint(edit, at)
                at += size
            elif tag == 6:  # deleted file: level, number
                _, at = _varint(edit, at)
                number, at = _varint(edit, at)
                live.discard(f"{number:06d}.ldb")
            elif tag == 7:  # new file: level, number, size, smallest key, largest key
                _, at = _varint(edit, at)
                number, at = _varint(edit, at)
                _, at = _varint(edit, at)
                for _key in range(2):
                    size, at = _varint(edit, at)
                    at += size
                live.add(f"{number:06d}.ldb")
            else:
                raise ValueError(f"unknown MANIFEST tag {tag}")
            if at > len(edit):
                raise ValueError("a MANIFEST record is cut short")
    return live


def _log_records(data: bytes) -> list[bytes]:
    """The records of a LevelDB log file (32 KiB blocks of fragments, each with a masked
    CRC32C, a length and a type: full, first, middle or last)."""
    records: list[bytes] = []
    block, at, pending = 32768, 0, b""
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's trailer too short for a header is padding
            at += block - at % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[at:at + 7])
        if kind == 0 and length == 0:  # preallocated zeroes
            at += block - at % block
            continue
        fragment = data[at + 7:at + 7 + length]
        if len(fragment) < length:
            break  # cut short at the end
        if not _masked_crc_matches(crc, bytes([kind]) + fragment):
            raise ValueError("a MANIFEST record fails its checksum")
        at += 7 + length
        if kind == 1:
            records.append(fragment)
        elif kind == 2:
            pending = fragment
        elif kind == 3:
            pending += fragment
        elif kind == 4:
            records.append(pending + fragment)
            pending = b""
        else:
            raise ValueError(f"unknown log record type {kind}")
    return records


def _masked_crc_matches(stored: int, data: bytes) -> bool:
    """Whether `stored`, a CRC-32C masked as LevelDB stores it (rotated, plus a constant), is `data`'s."""
    rot = (stored - 0xA282EAD8) & 0xFFFFFFFF
    return _crc32c(data) == ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as LevelDB checksums its blocks and log records (only small ones
    are read here: index blocks, MANIFEST edits)."""
    if not _CRC32C_TABLE:
        _CRC32C_TABLE.extend(_crc32c_entry(i) for i in range(256))
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_entry(i: int) -> int:
    for _ in range(8):
        i = (i >> 1) ^ (0x82F63B78 if i & 1 else 0)
    return i


_CRC32C_TABLE: list[int] = []


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def _table_damage(path: Path) -> str | None:
    """What is wrong with a LevelDB table's footer, index and meta-index blocks (the blocks that
    lead to its data; a damaged one hides the whole table from every iterator), checked against
    their CRC32C; None when they are whole. Data blocks are checked through LevelDB itself."""
    try:
        with open(path, "rb") as f:
            length = f.seek(0, os.SEEK_END)
            f.seek(max(0, length - 48))
            footer = f.read(48)
            if len(footer) < 48 or footer[-8:] != bytes.fromhex("57fb808b247547db"):
                return "its footer is damaged"
            at, blocks = 0, []
            for _ in range(2):  # meta-index, then index block: (offset, size) varints, then the block
                offset, at = _varint(footer, at)
                size, at = _varint(footer, at)
                if offset + size + 5 > length:
                    return "its footer is damaged"
                f.seek(offset)
                blocks.append(f.read(size + 5))  # contents, type byte, masked CRC32C
        for data in blocks:
            if not _masked_crc_matches(struct.unpack("<I", data[-4:])[0], data[:-4]):
                return "a block of its index fails its checksum"
    except (OSError, IndexError, struct.error):
        return "it cannot be read"
    return None


def repair_store(root: Path, name: str) -> None:
    """LevelDB's repair of one store: its readable records kept, damaged blocks and log records
    dropped (what they held shows up in `check` as damaged or orphaned videos)."""
    import plyvel

    try:
        (Path(root) / CLEAN_MARKER).unlink(missing_ok=True)  # what was dropped may leave orphans
        durable.sync_dir(root)
        path = Path(root) / f"{name}.ldb"
        unreadable = _unreadable_tables(sorted(path.glob("*.ldb")))  # every table: the repair reads them all
        if unreadable:  # set aside as LevelDB's repair sets aside what it cannot read (it would abort)
            durable.make_dirs(path / "lost")
            for table in unreadable:
                os.replace(path / table, path / "lost" / table)
            durable.sync_dir(path)
        plyvel.repair_db(str(path), paranoid_checks=True)
        db = plyvel.DB(str(Path(root) / f"{name}.ldb"))
        try:  # the schema key, should its block have been dropped (every store is written at one schema)
            if db.get(_SCHEMA_KEY) is None and any(True for _ in db.iterator(include_value=False)):
                db.put(_SCHEMA_KEY, str(SCHEMA_VERSION).encode(), sync=True)
        finally:
            db.close()
    except (plyvel.Error, OSError) as exc:
        raise CliptoolError(f"cannot repair the index's {name} store: {_error_text(exc)}") from None


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("held" in text or "resource temporarily unavailable" in text or "unavailable" in text)


class IndexStore:
    """The three stores of one index directory, opened together for a short while.

    Use as a context manager. LevelDB lets one process open a database at a time, so writers
    and readers hold the stores only for one batch and retry while another process has them.
    """

    def __init__(self, root: Path, create: bool = False, lock_timeout: float = 30.0, paranoid: bool = False) -> None:
        self.root = Path(root)
        self.create = create
        self.paranoid = paranoid  # LevelDB's paranoid_checks: a damaged log or MANIFEST fails the open
        self.lock_timeout = lock_timeout
        self._dbs: dict[str, Any] = {}
        self._began_changes = False  # this store has removed (or found missing) stores.clean
        self._from_clean = False  # ... and it was there: close() may write it back
        self._change_failed = False

    # -- opening -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return all((self.root / f"{n}.ldb" / "CURRENT").exists() for n in STORE_NAMES)

    def __enter__(self) -> IndexStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        import plyvel

        if not self.create and not self.exists():
            raise IndexMissingError(f"no index at {self.root} yet; run `cliptool index FOLDER` first")
        try:
            durable.make_dirs(self.root)
        except OSError as exc:
            raise CliptoolError(f"cannot create index directory {self.root}: {exc.strerror}") from None
        creating = self.create and not self.exists()
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                for name in STORE_NAMES:
                    path = self.root / f"{name}.ldb"
                    self._dbs[name] = _Verified(plyvel.DB(str(path), create_if_missing=self.create,
                                                          paranoid_checks=self.paranoid), path)
                break
            except plyvel.IOError as exc:
                self.close()
                if not _is_lock_error(exc):
                    raise CliptoolError(f"cannot open index at {self.root}: {_error_text(exc)}") from None
                if time.monotonic() >= deadline:
                    raise IndexBusyError(f"index at {self.root} is held by another process; try again") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except plyvel.Error as exc:
                self.close()
                raise CliptoolError(f"index at {self.root} is damaged ({_error_text(exc)}); "
                                    "run `cliptool check --repair`") from None
        if creating:  # the stores' folders, durable in the index folder before anything is committed
            self._write(lambda: durable.sync_dir(self.root))
        if self.create:
            for db in self._dbs.values():
                if db.get(_SCHEMA_KEY) is None:
                    self._write(lambda db=db: db.put(_SCHEMA_KEY, str(SCHEMA_VERSION).encode(), sync=True))
        self._check_schema()

    def close(self) -> None:
        if self._dbs and self._from_clean and not self._change_failed:
            self._mark_clean()
        self._began_changes = self._from_clean = False
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def _db(self, name: str) -> Any:
        return self._dbs[name]

    def _check_schema(self) -> None:
        for name, db in self._dbs.items():
            raw = db.get(_SCHEMA_KEY)
            version = int(raw) if raw else None
            if version is None and not any(True for _ in db.iterator(include_value=False)):
                continue  # empty store
            if version != SCHEMA_VERSION:
                raise IndexMismatchError(
                    f"index at {self.root} has schema version {version} in its {name} store, this "
                    f"cliptool writes version {SCHEMA_VERSION}; index into a new --index-dir"
                )

    # -- meta: which model built this index -----------------------------------------------------
    def meta(self) -> dict[str, Any]:
        raw = self._db("videos").get(_META_KEY)
        return json.loads(raw) if raw else {}

    def _has_videos(self) -> bool:
        return any(True for _ in self._db("videos").iterator(prefix=b"v/", include_value=False))

    def check_model(self, identity: str) -> None:
        """Raises IndexMismatchError if videos in this index were embedded by another model."""
        recorded = self.meta().get("model_identity")
        if recorded and recorded != identity and self._has_videos():
            raise IndexMismatchError(
                f"index at {self.root} was built with model {recorded}, not {identity}; "
                "use that model, or a new --index-dir for this one"
            )

    def bind_model(self, identity: str, spec: dict[str, str]) -> None:
        """Records the model of this index (checked first; an empty index may change model)."""
        self.check_model(identity)
        meta = self.meta()
        if meta.get("model_identity") == identity:
            return
        meta = {"schema": SCHEMA_VERSION, "model_identity": identity, "model": spec, "created": time.time(),
                **({"settings": meta["settings"]} if "settings" in meta else {})}
        self._write(lambda: self._db("videos").put(_META_KEY, json.dumps(meta).encode(), sync=True))

    def settings(self) -> dict[str, Any] | None:
        """The analysis settings of the index's last run that chose them (None: never chosen)."""
        return self.meta().get("settings")

    def record_settings(self, settings: dict[str, Any]) -> None:
        """Keeps the analysis settings later runs use when they choose none."""
        meta = self.meta()
        if meta.get("settings") != settings:
            meta["settings"] = settings
            self._write(lambda: self._db("videos").put(_META_KEY, json.dumps(meta).encode(), sync=True))

    # -- reading -----------------------------------------------------------------------------
    def videos(self) -> Iterator[VideoRecord]:
        for key, raw in self._db("videos").iterator(prefix=b"v/"):
            yield VideoRecord.from_json(raw)

    def get_video(self, video_id: str) -> VideoRecord | None:
        raw = self._db("videos").get(b"v/" + video_id.encode())
        return VideoRecord.from_json(raw) if raw else None

    def failures(self) -> dict[str, dict[str, Any]]:
        """Files that failed to decode, by video id: {path, size, mtime, error}."""
        out = {}
        for vid, raw in self.raw_failures():
            try:
                out[vid] = json.loads(raw)
            except ValueError:
                continue
        return out

    def put_failure(self, video_id: str, path: str, size: int, mtime: float, error: str) -> None:
        """Remembers that this file (at this size and mtime) cannot be decoded."""
        data = {"path": path, "size": size, "mtime": mtime, "error": error}
        self._write(lambda: self._db("videos").put(b"f/" + video_id.encode(), json.dumps(data).encode(), sync=True))

    def delete_failure(self, video_id: str) -> None:
        self._write(lambda: self._db("videos").delete(b"f/" + video_id.encode()))

    def scenes(self, video: VideoRecord) -> list[SceneRecord]:
        raw = self._db("scenes").get(_scenes_key(video.video_id, video.version))
        if raw is None:
            return []
        return [SceneRecord(**d) for d in json.loads(raw)]

    def vectors(self, video: VideoRecord) -> list[SceneVectors]:
        return [decode_vectors(raw) for _, raw in self.vector_records(video)]

    def words(self, video: VideoRecord) -> list[Any]:
        """A video's stored words as written (a list of JSON values; [] when it has none)."""
        raw = self.raw_words(video)
        if not raw:
            return []
        try:
            words = json.loads(raw)
        except ValueError:
            words = None
        if not isinstance(words, list):
            raise StoreDamagedError(f"the words of {video.path} are malformed: run `cliptool check --repair`")
        return words

    def raw_words(self, video: VideoRecord) -> bytes | None:
        """A video's stored words list as written (None when it names none or it is missing)."""
        if not video.words:
            return None
        return self._db("scenes").get(_words_key(video.video_id, video.words))

    def raw_scene_list(self, video: VideoRecord) -> bytes | None:
        """The stored scene list of a video as written (None when missing), for `check`."""
        return self._db("scenes").get(_scenes_key(video.video_id, video.version))

    def vector_records(self, video: VideoRecord) -> Iterator[tuple[str, bytes]]:
        """(scene id, encoded vectors) of a video's stored vector records, in scene order."""
        prefix = f"{video.video_id}/{video.version}/".encode()
        for key, raw in self._db("embeddings").iterator(prefix=prefix):
            yield key.decode(errors="replace"), raw

    def raw_failures(self) -> Iterator[tuple[str, bytes]]:
        """(video id, note as written) of every failure note, malformed ones too, for `check`."""
        for key, raw in self._db("videos").iterator(prefix=b"f/"):
            yield key[2:].decode(errors="replace"), raw

    def misfiled(self) -> list[tuple[VideoRecord, str]]:
        """Records filed under another spelling of their file's path (`..`, a symbolic link, or
        an index made before ids came from real paths), with the real path of each. Only files
        that exist now are judged: a missing disk's paths cannot be resolved."""
        out = []
        for rec in self.videos():
            if not os.path.exists(rec.path):
                continue
            real = real_path(rec.path)
            if rec.path != real or rec.video_id != video_id_for(real):
                out.append((rec, real))
        return out

    def refile(self, record: VideoRecord, real: str) -> str:
        """Files a misfiled record under its real path: moved there (no decoding) when nothing
        is there yet, else deleted as a duplicate of the record that is. Returns "moved" or
        "duplicate"."""
        target = video_id_for(real)
        if target != record.video_id and self.get_video(target) is not None:
            self.delete_video(record.video_id)
            return "duplicate"
        moved = VideoRecord(**{**asdict(record), "video_id": target, "path": real})
        if target == record.video_id:
            self.put_record(moved)
        else:
            self.move_video(record.video_id, moved)
        return "moved"

    def counts(self) -> dict[str, int]:
        return {
            "videos": sum(1 for _ in self._db("videos").iterator(prefix=b"v/", include_value=False)),
            "scene_lists": sum(1 for _ in self._db("scenes").iterator(prefix=b"s/", include_value=False)),
            "embeddings": sum(1 for k in self._db("embeddings").iterator(include_value=False) if not k.startswith(b"!")),
        }

    # -- the clean marker: no orphan scan while no change was cut short -------------------------
    @property
    def _clean_marker(self) -> Path:
        return self.root / CLEAN_MARKER

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Wraps a change that could leave orphans if cut short: stores.clean goes first."""
        if not self._began_changes:
            self._began_changes = True
            try:
                os.unlink(self._clean_marker)
                self._from_clean = True
                durable.sync_dir(self.root)
            except FileNotFoundError:
                self._from_clean = False
            except OSError as exc:
                self._change_failed = True
                raise _write_error(self.root, exc) from None
        ok = False
        try:
            yield
            ok = True
        finally:
            if not ok:
                self._change_failed = True

    def _mark_clean(self) -> None:
        """Writes stores.clean after a synced write to each store (which makes the unsynced
        deletions before it durable). A failure here only costs the next run a scan."""
        try:
            for name in ("scenes", "embeddings"):
                self._db(name).delete(_SYNC_KEY, sync=True)
            fd = os.open(self._clean_marker, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            durable.sync_dir(self.root)
        except Exception:  # noqa: BLE001 - the marker is an optimisation; without it the next run scans
            pass

    # -- writing -----------------------------------------------------------------------------
    def _write(self, action: Any) -> Any:
        """Runs a write; a storage failure (disk full, read-only) becomes a one-line error."""
        import plyvel

        try:
            return action()
        except (plyvel.Error, OSError) as exc:
            raise _write_error(self.root, exc) from None

    def put_video(self, record: VideoRecord, scenes: list[SceneRecord], vectors: list[SceneVectors],
                  words: list[Any] | None = None) -> VideoRecord:
        """Stores a video's scenes and vectors under a new version, then commits its record.
        words (JSON values, with `record.words_key` saying what they were made from): stored
        under a new words version too; None keeps the words the old record names."""
        if len(scenes) != len(vectors):
            raise ValueError("one vector record per scene")
        with deferred_interrupt(), self._changing():
            old = self.get_video(record.video_id)
            record.version = secrets.token_hex(4)
            record.scene_count = len(scenes)
            for scene in scenes:
                scene.scene_id = scene_id(record.video_id, record.version, scene.index)
            if words is None:
                record.words, record.words_key = (old.words, old.words_key) if old is not None else ("", "")
            else:
                self._put_words_version(record, words)
            self._write(lambda: self._put_version(record, scenes, [encode_vectors(v) for v in vectors]))
            key = b"v/" + record.video_id.encode()

            def commit() -> None:
                with self._db("videos").write_batch(sync=True) as batch:
                    batch.put(key, record.to_json())
                    batch.delete(b"f/" + record.video_id.encode())

            self._commit(commit)
            if old is not None:
                self._write(lambda: self._delete_version(old.video_id, old.version))
                if old.words and old.words != record.words:
                    self._write(lambda: self._delete_words(old.video_id, old.words))
        return record

    def put_words(self, video_id: str, words: list[Any], words_key: str) -> VideoRecord:
        """Replaces a video's words only (its scenes and vectors stay): the new words under a
        fresh words version (synced), then its record naming them (the commit point), then the
        old words are deleted. KeyError when the video is not indexed."""
        with deferred_interrupt(), self._changing():
            old = self.get_video(video_id)
            if old is None:
                raise KeyError(video_id)
            record = VideoRecord(**asdict(old))
            record.words_key = words_key
            self._put_words_version(record, words)
            self._commit(lambda: self._db("videos").put(b"v/" + video_id.encode(), record.to_json(), sync=True))
            if old.words and old.words != record.words:
                self._write(lambda: self._delete_words(old.video_id, old.words))
        return record

    def _put_words_version(self, record: VideoRecord, words: list[Any]) -> None:
        """Writes `words` (synced) under a fresh words version named in `record` ("" for none)."""
        if not words:
            record.words = ""
            return
        record.words = secrets.token_hex(4)
        raw = json.dumps(words, separators=(",", ":")).encode()  # ASCII: a stray surrogate is kept, escaped
        self._write(lambda: self._db("scenes").put(_words_key(record.video_id, record.words), raw, sync=True))

    def put_videos(self, items: list[tuple[VideoRecord, list[SceneRecord], list[SceneVectors]]]) -> list[VideoRecord]:
        """put_video for many videos with one commit: every video's vectors and scenes first
        (one synced batch per store), then all their records in one atomic batch (the commit
        point), then the old versions are deleted. For bulk writers (the synthetic bench index)."""
        if any(len(scenes) != len(vectors) for _, scenes, vectors in items):
            raise ValueError("one vector record per scene")
        with deferred_interrupt(), self._changing():
            olds = [self.get_video(record.video_id) for record, _, _ in items]
            for record, scenes, _ in items:
                record.version = secrets.token_hex(4)
                record.scene_count = len(scenes)
                for scene in scenes:
                    scene.scene_id = scene_id(record.video_id, record.version, scene.index)

            def put_versions() -> None:
                with self._db("embeddings").write_batch(sync=True) as batch:
                    for _, scenes, vectors in items:
                        for scene, vec in zip(scenes, vectors):
                            batch.put(scene.scene_id.encode(), encode_vectors(vec))
                with self._db("scenes").write_batch(sync=True) as batch:
                    for record, scenes, _ in items:
                        batch.put(_scenes_key(record.video_id, record.version),
                                  json.dumps([asdict(s) for s in scenes], separators=(",", ":")).encode())

            self._write(put_versions)

            def commit() -> None:
                with self._db("videos").write_batch(sync=True) as batch:
                    for record, _, _ in items:
                        batch.put(b"v/" + record.video_id.encode(), record.to_json())
                        batch.delete(b"f/" + record.video_id.encode())

            self._commit(commit)
            for old in olds:
                if old is not None:
                    self._write(lambda old=old: self._delete_version(old.video_id, old.version))
        return [record for record, _, _ in items]

    def put_record(self, record: VideoRecord) -> None:
        """Rewrites a video's record only (same version: its scenes and vectors stay)."""
        with deferred_interrupt():
            self._commit(lambda: self._db("videos").put(b"v/" + record.video_id.encode(), record.to_json(), sync=True))

    def _put_version(self, record: VideoRecord, scenes: list[SceneRecord], vectors: list[bytes]) -> None:
        with self._db("embeddings").write_batch(sync=True) as batch:
            for scene, raw in zip(scenes, vectors):
                batch.put(scene.scene_id.encode(), raw)
        self._db("scenes").put(
            _scenes_key(record.video_id, record.version),
            json.dumps([asdict(s) for s in scenes], separators=(",", ":")).encode(),
            sync=True,
        )

    def move_video(self, old_id: str, record: VideoRecord) -> VideoRecord:
        """Gives the video stored under `old_id` the new path and id of `record`, without
        re-embedding: its scenes and vectors are copied under the new id, then one atomic batch
        of the videos store adds the new record and deletes the old one."""
        with deferred_interrupt(), self._changing():
            old = self.get_video(old_id)
            if old is None:
                raise KeyError(old_id)
            scenes = self.scenes(old)
            prefix = f"{old.video_id}/{old.version}/".encode()
            raws = [raw for _, raw in self._db("embeddings").iterator(prefix=prefix)]
            if len(scenes) != old.scene_count or len(raws) != old.scene_count:
                raise ValueError(f"stored video {old.path} is incomplete")
            replaced = self.get_video(record.video_id)
            record.version = secrets.token_hex(4)
            record.scene_count = len(scenes)
            for scene in scenes:
                scene.scene_id = scene_id(record.video_id, record.version, scene.index)
            old_words = self.raw_words(old)
            record.words = ""
            record.words_key = old.words_key if old_words is not None or not old.words else ""
            if old_words is not None:
                self._put_words_version(record, json.loads(old_words))
            self._write(lambda: self._put_version(record, scenes, raws))

            def commit() -> None:
                with self._db("videos").write_batch(sync=True) as batch:
                    batch.put(b"v/" + record.video_id.encode(), record.to_json())
                    batch.delete(b"f/" + record.video_id.encode())
                    batch.delete(b"v/" + old_id.encode())

            self._commit(commit)
            self._write(lambda: self._delete_version(old.video_id, old.version))
            self._write(lambda: self._delete_words(old.video_id, old.words))
            if replaced is not None:
                self._write(lambda: self._delete_version(replaced.video_id, replaced.version))
                self._write(lambda: self._delete_words(replaced.video_id, replaced.words))
        return record

    def delete_video(self, video_id: str) -> bool:
        """Removes a video (record first, the commit point; then its scenes and vectors)."""
        with deferred_interrupt(), self._changing():
            old = self.get_video(video_id)
            self._write(lambda: self._db("videos").delete(b"f/" + video_id.encode()))
            if old is None:
                return False
            self._commit(lambda: self._db("videos").delete(b"v/" + video_id.encode(), sync=True))
            self._write(lambda: self._delete_version(old.video_id, old.version))
            self._write(lambda: self._delete_words(old.video_id, old.words))
        return True

    def _commit(self, write: Any) -> None:
        self._write(lambda: bump_generation(self.root))
        self._write(write)
        self._write(lambda: bump_generation(self.root))

    def _delete_version(self, video_id: str, version: str) -> None:
        self._db("scenes").delete(_scenes_key(video_id, version))
        prefix = f"{video_id}/{version}/".encode()
        with self._db("embeddings").write_batch() as batch:
            for key in self._db("embeddings").iterator(prefix=prefix, include_value=False):
                batch.delete(key)

    def _delete_words(self, video_id: str, words: str) -> None:
        if words:
            self._db("scenes").delete(_words_key(video_id, words))

    def orphans(self) -> tuple[list[bytes], list[bytes]]:
        """Keys of scene lists (and words lists) and of vectors that no video record names (left
        by a crash)."""
        records = list(self.videos())
        live = {(v.video_id, v.version) for v in records}
        live_words = {(v.video_id, v.words) for v in records if v.words}
        scene_keys = [
            key for key in self._db("scenes").iterator(prefix=b"s/", include_value=False)
            if tuple(key.decode(errors="replace").split("/", 2)[1:]) not in live
        ] + [
            key for key in self._db("scenes").iterator(prefix=b"w/", include_value=False)
            if tuple(key.decode(errors="replace").split("/", 2)[1:]) not in live_words
        ]
        return scene_keys, self._orphan_vector_keys(live)

    def _orphan_vector_keys(self, live: set[tuple[str, str]]) -> list[bytes]:
        """Vector keys of no live (video id, version). Keys sort by video id and version, so a
        live video's keys are skipped with one seek past its prefix: the cost grows with the
        videos and the orphans, not with every scene of a large index."""
        out: list[bytes] = []
        it = self._db("embeddings").iterator(include_value=False)
        try:
            for key in it:
                if key.startswith(b"!"):
                    continue
                parts = key.split(b"/", 2)
                owner = tuple(p.decode(errors="replace") for p in parts[:2])
                if owner in live and len(parts) == 3:
                    it.seek(parts[0] + b"/" + parts[1] + b"/\xff")  # past this version's scenes
                    continue
                out.append(key)
        finally:
            it.close()
        return out

    def recover(self, full: bool = False) -> int:
        """Deletes scene lists and vectors that no video record names (left by a crash); with
        stores.clean present there are none, and only `full` scans all the same.

        Call only while holding the WriterLock: a writer's uncommitted version looks orphaned."""
        if not full and not self._began_changes and self._clean_marker.exists():
            return 0
        scene_keys, vector_keys = self.orphans()

        def delete() -> None:
            with self._db("scenes").write_batch() as batch:
                for key in scene_keys:
                    batch.delete(key)
            with self._db("embeddings").write_batch() as batch:
                for key in vector_keys:
                    batch.delete(key)

        if scene_keys or vector_keys:
            with self._changing():
                self._write(delete)
        if not self._change_failed:  # no orphans now: close() writes stores.clean
            self._began_changes = self._from_clean = True
        return len(scene_keys) + len(vector_keys)


def _scenes_key(video_id: str, version: str) -> bytes:
    return f"s/{video_id}/{version}".encode()


def _words_key(video_id: str, words: str) -> bytes:
    return f"w/{video_id}/{words}".encode()


# -- generation token ---------------------------------------------------------------------------
def generation(root: Path) -> str:
    """The current generation token ('' when none was written yet)."""
    try:
        return (Path(root) / "generation").read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def bump_generation(root: Path) -> None:
    """A new token, durable before the commit that follows it: a crash must never bring back a
    token that a search cache built before the commit recorded."""
    durable.write_text(Path(root) / "generation", uuid.uuid4().hex)


# -- one index run at a time --------------------------------------------------------------------
class WriterLock:
    """An exclusive lock on the index for one `cliptool index` run (flock: freed on any exit)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "index.lock"
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CliptoolError(f"cannot write to the index at {self.path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise IndexBusyError(f"index at {self.path.parent} is in use by process {holder}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise CliptoolError(f"cannot write to the index at {self.path.parent}: {exc.strerror or exc}") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
