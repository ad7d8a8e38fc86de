"""Serving from Milvus: the scene and frame vectors as Milvus collections, derived from the stores.

`--vector-store milvus://...` (recorded in the index by `cliptool index`, or given to one
`search`/`serve` run) makes search ask Milvus instead of the local FAISS cache. The LevelDB
stores stay the source of truth; like the FAISS cache the collections are derived from them:

- `<name>_scenes`: one entity per scene: its scene vector (FLAT index, inner product: exact,
  as FAISS's flat scan), id, video, times, sample times, and what filters look at: the video's
  real path, file date (mtime) and length.
- `<name>_frames`: one entity per sample frame: its vector, its scene's row, the same filter fields.
- `<name>_videos`: one entity per video: (version, path, rows), what a sync compares with the stores.

The scenes collection's properties hold the model and the stores' generation it matches, so a
lagging collection is seen (and caught up by comparing video records) when a search opens it.
`sync_collection` writes only the videos that changed; `check` compares counts and video states
with the stores, `check --repair` rebuilds. Rows (primary keys) are a hash of the scene id, so
a rebuild gives the same rows. A video's entities are deleted before its new ones go in and its
videos entry is written last, so a crash between leaves a difference the next sync finds.

pymilvus is imported only by the code that talks to Milvus (never by `cliptool --help`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cliptool.errors import CliptoolError, IndexMissingError, UsageError, one_line
from cliptool.store import IndexStore, VideoRecord, generation, path_under
from cliptool.vectors.base import ScenePosition, VideoFilter, row_times

if TYPE_CHECKING:
    pass

VECTOR_STORE_FILE = "vector-store.json"  # in the index directory: the store `cliptool index` recorded
VECTOR_STORE_ENV = "CLIPTOOL_VECTOR_STORE"  # set by `search/serve --vector-store` for one run
DEFAULT_COLLECTION = "cliptool"
LITE_DEFAULT_FILE = "milvus.db"  # `--vector-store milvus` alone: Milvus Lite in the index directory
INSTALL_HINT = "--vector-store milvus needs pymilvus: pip install 'cliptool[cluster]'"
MAX_TOPK = 16_384  # Milvus answers at most this many hits per search
_BATCH = 5_000  # entities per insert (10 MB of 512-d vectors: under Milvus's message size limit)
_QUERY_BATCH = 1_000  # ids per query (its answer stays under MAX_TOPK entities)
_CACHE_ROWS = 50_000  # fetched scenes kept by a searcher (positions, vectors) before starting afresh
_PROP = "cliptool."
COLLECTION_SCHEMA = "1"  # the collections' layout; another one is rebuilt
Report = Callable[[str], None]

_POSITION_FIELDS = ["row", "scene_id", "video_id", "path", "raw_path", "scene_index", "start_time", "end_time",
                    "sample_times", "continues_shot", "frame_count"]


@dataclass(frozen=True)
class MilvusTarget:
    """Where the collections live: `uri` as MilvusClient takes it (a local file for Milvus
    Lite, or http(s)://host:port) and the collections' name prefix."""

    uri: str
    collection: str = DEFAULT_COLLECTION
    spelled: str = ""  # as recorded in the index

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    @property
    def scenes(self) -> str:
        return f"{self.collection}_scenes"

    @property
    def frames(self) -> str:
        return f"{self.collection}_frames"

    @property
    def videos(self) -> str:
        return f"{self.collection}_videos"


def parse_vector_store(text: str, index_dir: Path | None = None) -> MilvusTarget | None:
    """The target a --vector-store value names; None for `faiss` (the local cache).

    `milvus` alone: Milvus Lite in INDEX_DIR/milvus.db; `milvus:///abs/file.db`, `milvus://rel.db`
    or a path ending in .db: Milvus Lite in that file (a relative one from the current folder);
    `milvus://host:19530`, `milvus+http://host:port`, `milvus+https://host`: a Milvus server.
    `?collection=NAME` picks the collections' name prefix (default "cliptool")."""
    value = text.strip()
    if value.lower() == "faiss":
        return None
    value, _, query = value.partition("?")
    collection = DEFAULT_COLLECTION
    if query:
        key, _, name = query.partition("=")
        if key != "collection" or not name.replace("_", "").isalnum() or not (name[0].isalpha() or name[0] == "_"):
            raise UsageError(f"--vector-store: bad option {query!r} (use ?collection=NAME: letters, digits, _)")
        collection = name
    if value == "milvus":
        if index_dir is None:
            raise UsageError("--vector-store milvus: no index directory to keep the Milvus Lite file in")
        uri = str(Path(index_dir).expanduser().resolve() / LITE_DEFAULT_FILE)
    elif value.startswith("milvus+https://") or value.startswith("milvus+http://"):
        uri = value[len("milvus+"):]
    elif value.startswith("milvus://"):
        rest = value[len("milvus://"):]
        if rest.startswith("/") or rest.endswith(".db"):
            uri = str(Path(rest).expanduser().resolve())
        elif rest:
            uri = "http://" + (rest if ":" in rest.rsplit("]", 1)[-1] else rest + ":19530")
        else:
            raise UsageError("--vector-store milvus://: name a host (milvus://host:19530) or a file (milvus:///path/x.db)")
    elif value.endswith(".db"):
        uri = str(Path(value).expanduser().resolve())
    else:
        raise UsageError(f"--vector-store: not a vector store: {text!r} (use faiss, milvus, milvus:///path/file.db, "
                         "milvus://host:19530 or milvus+https://host)")
    if uri.startswith(("http://", "https://")):
        spelled = "milvus+" + uri
    else:
        spelled = "milvus://" + uri
    if collection != DEFAULT_COLLECTION:
        spelled += f"?collection={collection}"
    return MilvusTarget(uri, collection, spelled)


def recorded_vector_store(index_dir: Path) -> str | None:
    """The vector store `cliptool index --vector-store` recorded in the index (None: FAISS)."""
    try:
        return str(json.loads((Path(index_dir) / VECTOR_STORE_FILE).read_text())["vector_store"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_vector_store(index_dir: Path, text: str) -> MilvusTarget | None:
    """Records the vector store searches of this index use (`faiss`: the local cache); checks
    first that a Milvus one can be reached (pymilvus there, the server up, the Lite file free)."""
    index_dir = Path(index_dir)
    target = parse_vector_store(text, index_dir)
    path = index_dir / VECTOR_STORE_FILE
    if target is None:
        path.unlink(missing_ok=True)
        return None
    connect(target)
    if target.lite:
        release(target)
    from cliptool import durable

    durable.make_dirs(index_dir)
    durable.write_text(path, json.dumps({"vector_store": target.spelled}))
    return target


def resolve_target(index_dir: Path, override: str | None = None) -> MilvusTarget | None:
    """The store a search uses: `override`, else $CLIPTOOL_VECTOR_STORE, else the recorded one;
    None: the FAISS cache."""
    text = override or os.environ.get(VECTOR_STORE_ENV) or recorded_vector_store(index_dir)
    return parse_vector_store(text, index_dir) if text else None


# -- talking to Milvus ----------------------------------------------------------------------------
def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise CliptoolError(INSTALL_HINT) from None
    # Their errors reach the user as one line, not a logged traceback; "grpc._server" is Milvus
    # Lite's in-process server, which logs every call it does not implement (pymilvus asks for
    # AllocTimestamp while an index is built, and takes "unimplemented" as an answer).
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


_clients: dict[str, Any] = {}


def connect(target: MilvusTarget) -> Any:
    """A MilvusClient for the target, one per process and URI. A Milvus Lite file is served to
    one process at a time: another process's is a one-line error."""
    client = _clients.get(target.uri)
    if client is not None:
        return client
    pymilvus = _pymilvus()
    if target.lite:
        Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = pymilvus.MilvusClient(uri=target.uri, timeout=10)
    except ImportError:
        raise CliptoolError(INSTALL_HINT.replace("pymilvus", "milvus-lite")) from None
    except Exception as exc:  # noqa: BLE001 - pymilvus raises several kinds; each is one line here
        if target.lite:
            raise CliptoolError(f"cannot open the Milvus Lite file {target.uri} ({one_line(exc)}): Milvus Lite "
                                "serves one process at a time; stop the other one (a `cliptool serve`?) "
                                "or use a Milvus server") from None
        raise CliptoolError(f"cannot reach the Milvus server at {target.uri}: {one_line(exc)}") from None
    _clients[target.uri] = client
    return client


def release(target: MilvusTarget) -> None:
    """Closes this process's client for the target and, for a Milvus Lite file, stops the
    in-process Lite server, so that another process may open the file."""
    client = _clients.pop(target.uri, None)
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
    if target.lite:
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return
        server_manager_instance.release_server(target.uri)


@contextmanager
def _milvus_errors(target: MilvusTarget) -> Iterator[None]:
    """Milvus failures as one-line CliptoolErrors."""
    try:
        yield
    except CliptoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - MilvusException and grpc errors
        if type(exc).__module__.startswith(("pymilvus", "grpc")):
            raise CliptoolError(f"Milvus at {target.uri}: {one_line(exc)}") from None
        raise


def _literal(text: str) -> str:
    """A string literal of Milvus's expression language."""
    return json.dumps(text, ensure_ascii=False)


def _text(path: str) -> tuple[str, str]:
    """(path as Milvus text, its exact bytes in hex when it is not valid UTF-8, else "")."""
    try:
        path.encode("utf-8")
        return path, ""
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace"), raw.hex()


def _untext(text: str, raw: str) -> str:
    return bytes.fromhex(raw).decode("utf-8", "surrogateescape") if raw else text


def row_of(scene_id: str) -> int:
    """A scene's primary key: 63 bits of a hash of its id (the same in every rebuild)."""
    return int.from_bytes(hashlib.blake2b(scene_id.encode(), digest_size=8).digest(), "big") >> 1


def frame_key(scene_id: str, k: int) -> int:
    """The primary key of a scene's k-th sample frame (so its frames are fetched by key)."""
    return row_of(f"{scene_id}#{k}")


def _create(client: Any, target: MilvusTarget, dim: int) -> None:
    """The three collections, empty (any old ones dropped)."""
    from pymilvus import DataType, MilvusClient

    for name in (target.scenes, target.frames, target.videos):
        if client.has_collection(name):
            client.drop_collection(name)

    def filter_fields(schema: Any) -> None:
        schema.add_field("video_id", DataType.VARCHAR, max_length=64)
        schema.add_field("path", DataType.VARCHAR, max_length=65_535)
        schema.add_field("mtime", DataType.DOUBLE)
        schema.add_field("duration", DataType.DOUBLE)

    scenes = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    scenes.add_field("row", DataType.INT64, is_primary=True)
    scenes.add_field("scene_id", DataType.VARCHAR, max_length=256)
    filter_fields(scenes)
    scenes.add_field("raw_path", DataType.VARCHAR, max_length=65_535)
    scenes.add_field("scene_index", DataType.INT64)
    scenes.add_field("start_time", DataType.DOUBLE)
    scenes.add_field("end_time", DataType.DOUBLE)
    scenes.add_field("sample_times", DataType.ARRAY, element_type=DataType.DOUBLE, max_capacity=4_096)
    scenes.add_field("continues_shot", DataType.BOOL)
    scenes.add_field("frame_count", DataType.INT64)  # its frames' primary keys follow (see frame_key)
    scenes.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    frames = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    frames.add_field("id", DataType.INT64, is_primary=True)
    frames.add_field("row", DataType.INT64)
    frames.add_field("k", DataType.INT64)  # the frame's place among its scene's samples
    filter_fields(frames)
    frames.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    videos = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    videos.add_field("video_id", DataType.VARCHAR, max_length=64, is_primary=True)
    videos.add_field("version", DataType.VARCHAR, max_length=256)
    videos.add_field("path", DataType.VARCHAR, max_length=65_535)
    videos.add_field("raw_path", DataType.VARCHAR, max_length=65_535)
    videos.add_field("rows", DataType.INT64)
    videos.add_field("frames", DataType.INT64)
    videos.add_field("mtime", DataType.DOUBLE)
    videos.add_field("duration", DataType.DOUBLE)
    videos.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
    for name, schema in ((target.scenes, scenes), (target.frames, frames), (target.videos, videos)):
        index = client.prepare_index_params()
        index.add_index("unused" if name == target.videos else "vector", index_type="FLAT", metric_type="IP")
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")


def _properties(client: Any, target: MilvusTarget) -> dict[str, str] | None:
    """The scenes collection's cliptool properties (model, generation), None when it is missing."""
    if not client.has_collection(target.scenes):
        return None
    if not all(client.has_collection(n) for n in (target.frames, target.videos)):
        return {}
    props = client.describe_collection(target.scenes).get("properties") or {}
    return {k[len(_PROP):]: str(v) for k, v in props.items() if k.startswith(_PROP)}


def _set_properties(client: Any, target: MilvusTarget, **values: str) -> None:
    client.alter_collection_properties(target.scenes, properties={_PROP + k: v for k, v in values.items()})


def _load(client: Any, target: MilvusTarget) -> None:
    for name in (target.scenes, target.frames, target.videos):
        client.load_collection(name)


def _query_all(client: Any, collection: str, expression: str, fields: list[str], hex_key: str | None = None,
               prefix: str = "") -> list[dict[str, Any]]:
    """Every entity matching `expression`. One query answers at most MAX_TOPK entities; past
    that, with `hex_key` (a field of hex digits, such as video ids) the query is split by the
    key's leading digits."""
    where = expression
    if prefix:
        where = f"({expression}) and {hex_key} like {_literal(prefix + '%')}" if expression else \
            f"{hex_key} like {_literal(prefix + '%')}"
    found = client.query(collection, filter=where, output_fields=fields, limit=MAX_TOPK)
    if len(found) < MAX_TOPK:
        return list(found)
    if hex_key is None or len(prefix) >= 16:
        raise CliptoolError(f"more than {MAX_TOPK} entities of {collection} match {expression!r}")
    return [e for digit in "0123456789abcdef"
            for e in _query_all(client, collection, expression, fields, hex_key, prefix + digit)]


def _video_states(client: Any, target: MilvusTarget, ids: Iterable[str] | None) -> dict[str, tuple[str, str]]:
    """video id -> (version, path) of the videos the collection holds (of `ids`, or all)."""
    fields = ["video_id", "version", "path", "raw_path"]
    if ids is None:
        found: Iterable[dict[str, Any]] = _query_all(client, target.videos, "", fields, hex_key="video_id")
    else:
        wanted = sorted(set(ids))
        found = [e for a in range(0, len(wanted), _QUERY_BATCH)
                 for e in client.query(target.videos, filter=f"video_id in {json.dumps(wanted[a:a + _QUERY_BATCH])}",
                                       output_fields=fields)] if wanted else []
    return {e["video_id"]: (e["version"], _untext(e["path"], e["raw_path"])) for e in found}


def _entities(store: IndexStore, video: VideoRecord) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The scene and frame entities of one video, from the stores."""
    path, raw = _text(video.path)
    facts = {"video_id": video.video_id, "path": path, "mtime": float(video.mtime), "duration": float(video.duration)}
    scenes, frames = [], []
    for scene, vec in zip(store.scenes(video), store.vectors(video)):
        row = row_of(scene.scene_id)
        count = len(vec.frames)
        times = row_times(scene.sample_times, count, scene.start_time)
        scenes.append({"row": row, "scene_id": scene.scene_id, **facts, "raw_path": raw, "scene_index": scene.index,
                       "start_time": float(scene.start_time), "end_time": float(scene.end_time),
                       "sample_times": [float(t) for t in times], "continues_shot": bool(scene.continues_shot),
                       "frame_count": count,
                       "vector": np.asarray(vec.scene, dtype=np.float32).tolist()})
        for k, frame in enumerate(vec.frames):
            frames.append({"id": frame_key(scene.scene_id, k), "row": row, "k": k, **facts,
                           "vector": np.asarray(frame, dtype=np.float32).tolist()})
    return scenes, frames


def _insert(client: Any, collection: str, entities: list[dict[str, Any]], fresh: bool) -> None:
    """Writes entities in batches: inserted into a fresh collection, else upserted (primary keys
    come from scene ids, so two processes catching up the same video never leave duplicates)."""
    write = client.insert if fresh else client.upsert
    for a in range(0, len(entities), _BATCH):
        write(collection, entities[a : a + _BATCH])


@dataclass
class CollectionSync:
    """What a `sync_collection` call did."""

    rebuilt: bool = False
    written: int = 0  # videos whose entities were (re)written
    deleted: int = 0  # videos whose entities were removed
    scenes: int = 0  # scene entities written


def sync_collection(index_dir: Path, target: MilvusTarget, video_ids: Iterable[str] | None = None,
                    since: str | None = None, rebuild: bool = False) -> CollectionSync:
    """Brings the Milvus collections in line with the stores: the videos given (committed,
    replaced, moved: both ids, removed) or, with None, every video that differs. The collection
    is marked current when it was current at `since` (the generation before those commits) or
    everything was compared. No collection, one of another model, or rebuild: built afresh."""
    index_dir = Path(index_dir)
    if not IndexStore(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir} yet; run `cliptool index FOLDER` first")
    result = CollectionSync()
    client = connect(target)
    with _milvus_errors(target):
        token = generation(index_dir)  # read before the stores: a later commit leaves the collection stale
        with IndexStore(index_dir) as store:
            meta = store.meta()
            if not meta:
                raise IndexMissingError(f"index at {index_dir} holds no videos yet; run `cliptool index FOLDER`")
            props = _properties(client, target)
            if rebuild or not props or props.get("model_identity") != meta.get("model_identity") or \
                    props.get("schema") != COLLECTION_SCHEMA:
                dim = _store_dim(store)
                if dim is None:
                    raise IndexMissingError(f"index at {index_dir} holds no scenes yet; run `cliptool index FOLDER`")
                _create(client, target, dim)
                _set_properties(client, target, schema=COLLECTION_SCHEMA, model_identity=meta["model_identity"],
                                model=json.dumps(meta["model"]), dim=str(dim), generation="")
                props, video_ids, result.rebuilt = {"generation": ""}, None, True
            _load(client, target)
            if video_ids is None:
                current = {r.video_id: r for r in store.videos()}
                states = _video_states(client, target, None)
                ids = set(current) | set(states)
            else:
                ids = set(video_ids)
                current = {vid: rec for vid in ids if (rec := store.get_video(vid)) is not None}
                states = _video_states(client, target, ids)
            pending: list[tuple[VideoRecord, list[dict[str, Any]], list[dict[str, Any]]]] = []
            for vid in sorted(ids):
                record = current.get(vid)
                if record is not None and states.get(vid) == (record.version, record.path):
                    continue
                if not result.rebuilt:  # whatever was there (or a crash left), then the new
                    for name in (target.scenes, target.frames):
                        client.delete(name, filter=f"video_id == {_literal(vid)}")
                if record is None:
                    client.delete(target.videos, filter=f"video_id == {_literal(vid)}")
                    result.deleted += 1
                    continue
                pending.append((record, *_entities(store, record)))
                if sum(len(p[2]) for p in pending) >= _BATCH:
                    _write_videos(client, target, pending, result)
            _write_videos(client, target, pending, result)
            if video_ids is None or props.get("generation") == since:
                _set_properties(client, target, generation=token)
    return result


def _write_videos(client: Any, target: MilvusTarget,
                  pending: list[tuple[VideoRecord, list[dict[str, Any]], list[dict[str, Any]]]],
                  result: CollectionSync) -> None:
    """Inserts the entities of some videos, then their videos entries (so an entry means its
    entities are in), and empties `pending`."""
    if not pending:
        return
    _insert(client, target.scenes, [e for p in pending for e in p[1]], result.rebuilt)
    _insert(client, target.frames, [e for p in pending for e in p[2]], result.rebuilt)
    entries = []
    for record, scenes, frames in pending:
        path, raw = _text(record.path)
        entries.append({"video_id": record.video_id, "version": record.version, "path": path, "raw_path": raw,
                        "rows": len(scenes), "frames": len(frames), "mtime": float(record.mtime),
                        "duration": float(record.duration), "unused": [0.0, 0.0]})
        result.written += 1
        result.scenes += len(scenes)
    client.upsert(target.videos, entries)
    pending.clear()


def _store_dim(store: IndexStore) -> int | None:
    for video in store.videos():
        for vec in store.vectors(video):
            return int(vec.scene.shape[0])
    return None


def collection_state(index_dir: Path, target: MilvusTarget) -> str:
    """"missing", "current" (in line with the stores' generation) or "stale"."""
    client = connect(target)
    with _milvus_errors(target):
        props = _properties(client, target)
    if not props:
        return "missing"
    return "current" if props.get("generation") == generation(index_dir) else "stale"


def collection_problems(index_dir: Path, target: MilvusTarget, records: list[VideoRecord]) -> list[str]:
    """How the collections differ from the stores' (valid) video records: missing, another
    model, videos missing, extra or out of date, scene or frame counts that disagree."""
    client = connect(target)
    with _milvus_errors(target):
        props = _properties(client, target)
        if props is None:
            return [f"the Milvus collection {target.scenes} at {target.uri} is missing"]
        if not props:
            return [f"the Milvus collections {target.collection}_* at {target.uri} are incomplete"]
        with IndexStore(index_dir) as store:
            identity = store.meta().get("model_identity")
            expected_frames = {r.video_id: sum(len(v.frames) for v in store.vectors(r)) for r in records}
        if props.get("model_identity") != identity:
            return [f"the Milvus collection {target.scenes} holds vectors of another model"]
        if props.get("schema") != COLLECTION_SCHEMA:
            return [f"the Milvus collection {target.scenes} has another layout (made by another cliptool)"]
        _load(client, target)
        wrong = []
        states = _video_states(client, target, None)
        current = {r.video_id: (r.version, r.path) for r in records}
        lagging = sum(1 for vid, state in current.items() if states.get(vid) != state)
        extra = sum(1 for vid in states if vid not in current)
        if lagging or extra:
            wrong.append(f"the Milvus collection is out of step: {lagging} video(s) missing or out of date, "
                         f"{extra} no longer indexed")
        scenes = _count(client, target.scenes)
        frames = _count(client, target.frames)
        want_scenes = sum(r.scene_count for r in records)
        want_frames = sum(expected_frames.values())
        if not wrong and (scenes != want_scenes or frames != want_frames):
            wrong.append(f"the Milvus collection holds {scenes} scene(s) and {frames} frame(s); the stores "
                         f"{want_scenes} and {want_frames}")
        return wrong


def _count(client: Any, collection: str) -> int:
    found = client.query(collection, filter="", output_fields=["count(*)"])
    return int(found[0]["count(*)"]) if found else 0


# -- hooks for the index run and check ------------------------------------------------------------------
def sync_recorded(index_dir: Path, video_ids: list[str] | None, since: str | None, report: Report) -> None:
    """After a commit: the recorded Milvus collection takes in these videos (None: whatever
    differs). A failure loses nothing: a later search, index run or `check --repair` catches up.
    A Milvus Lite file is let go afterwards, so that another process may open it."""
    text = recorded_vector_store(index_dir)
    if not text:
        return
    try:
        target = parse_vector_store(text, index_dir)
        if target is None:
            return
        try:
            if video_ids is not None or collection_state(index_dir, target) != "current":
                sync_collection(index_dir, target, video_ids, since=since)
        finally:
            if target.lite:
                release(target)
    except IndexMissingError:
        pass
    except (CliptoolError, OSError) as exc:
        report(f"warning: could not update the Milvus collection ({one_line(exc)}); a search or "
               "`cliptool check --repair` catches up")


# -- what a search asks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MilvusFilter:
    """Which rows may answer, as a Milvus filter expression: stands in for the boolean row mask
    a FAISS search takes (`any`/`all` answer as such a mask would)."""

    expression: str

    def any(self) -> bool:
        return self.expression != "false"

    def all(self) -> bool:
        return self.expression == ""


def _like_prefix(folder: str) -> str | None:
    """A LIKE pattern matching paths under `folder` (None when Milvus cannot spell it)."""
    if "\\" in folder:
        return None
    return folder.replace("%", "\\%").replace("_", "\\_") + "%"


class _VideoColumn:
    """The per-row video numbers search ranks videos with, for the rows a search has seen."""

    def __init__(self, vectors: MilvusVectors) -> None:
        self.vectors = vectors
        self.ids: list[str] = []
        self._numbers: dict[str, int] = {}

    def __getitem__(self, rows: Any) -> np.ndarray:
        out = []
        for row in np.asarray(rows, dtype=np.int64).reshape(-1):
            vid = self.vectors.position(int(row)).video_id
            if vid not in self._numbers:
                self._numbers[vid] = len(self.ids)
                self.ids.append(vid)
            out.append(self._numbers[vid])
        return np.asarray(out, dtype=np.int64)


class MilvusVectors:
    """Answers the searcher as a VectorIndex does, from the Milvus collections: rows are the
    scenes' primary keys; what a search found (positions, scene and frame vectors) is kept."""

    def __init__(self, index_dir: Path, target: MilvusTarget, client: Any, props: dict[str, str]) -> None:
        self.index_dir = Path(index_dir)
        self.target = target
        self.client = client
        self._dim = int(props["dim"])
        self._scenes = _count(client, target.scenes)
        self._frame_total = _count(client, target.frames)
        self.meta: dict[str, Any] = {"model": json.loads(props["model"]), "model_identity": props["model_identity"],
                                     "scenes": self._scenes, "vector_store": target.spelled}
        self._positions: dict[int, ScenePosition] = {}
        self._scene_vectors: dict[int, np.ndarray] = {}
        self._frames: dict[int, np.ndarray] = {}
        self._frame_counts: dict[int, int] = {}
        self._column: _VideoColumn | None = None

    @classmethod
    def open(cls, index_dir: Path, target: MilvusTarget) -> MilvusVectors:
        """The collections of `target`, caught up with the stores first when they lag (built
        when missing)."""
        client = connect(target)
        with _milvus_errors(target):
            props = _properties(client, target)
            if not props or props.get("generation") != generation(index_dir) or \
                    props.get("schema") != COLLECTION_SCHEMA:  # (a sync checks the model too)
                sync_collection(index_dir, target)
                props = _properties(client, target) or {}
            else:
                _load(client, target)
            return cls(index_dir, target, client, props)

    @property
    def size(self) -> int:
        return self._scenes

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_spec(self) -> dict[str, str]:
        return self.meta["model"]

    def describe(self) -> dict[str, Any]:
        return {"kind": "milvus", "uri": self.target.uri, "collection": self.target.collection, "rows": self.size}

    # -- filters ---------------------------------------------------------------------------------
    def filter_for(self, where: VideoFilter) -> MilvusFilter:
        """The Milvus expression of a search's filters (folders, file dates, lengths)."""
        parts = []
        if where.under:
            either = []
            needs_listing = []
            for folder in where.under:
                text, raw = _text(folder)
                pattern = _like_prefix(text.rstrip(os.sep) + os.sep) if not raw else None
                if pattern is None:
                    needs_listing.append(folder)
                    continue
                either += [f"path == {_literal(text)}", f"path like {_literal(pattern)}"]
            if needs_listing:  # a folder Milvus cannot spell as a pattern: its videos by id
                ids = [vid for vid, (_, path) in _video_states(self.client, self.target, None).items()
                       if path_under(path, needs_listing)]
                either.append(f"video_id in {json.dumps(sorted(ids))}")
            parts.append("(" + " or ".join(either) + ")")
        for name, op, value in (("mtime", ">=", where.since), ("mtime", "<=", where.until),
                                ("duration", ">=", where.min_duration), ("duration", "<=", where.max_duration)):
            if value is not None:
                parts.append(f"{name} {op} {float(value)!r}")
        return MilvusFilter(" and ".join(parts))

    def native_filter(self, where: VideoFilter) -> MilvusFilter:
        return self.filter_for(where)

    def listed_videos(self) -> list[dict[str, Any]]:
        return []  # the stores answer

    def row_videos(self) -> tuple[list[str], _VideoColumn]:
        return self.video_column()

    def video_column(self) -> tuple[list[str], _VideoColumn]:
        """(video ids, per-row video numbers) for ranking videos; filled as rows are seen."""
        if self._column is None:
            self._column = _VideoColumn(self)
        return self._column.ids, self._column

    # -- searching --------------------------------------------------------------------------------
    def _search(self, collection: str, query: np.ndarray, k: int, allowed: MilvusFilter | None,
                fields: list[str]) -> list[dict[str, Any]]:
        expression = allowed.expression if allowed is not None else ""
        with _milvus_errors(self.target):
            found = self.client.search(collection, data=[np.asarray(query, dtype=np.float32).reshape(-1).tolist()],
                                       limit=k, filter=expression, output_fields=fields,
                                       search_params={"metric_type": "IP"})
        return list(found[0]) if found else []

    def scores(self, query: np.ndarray, k: int, allowed: MilvusFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) by scene vector, best first, ties by row, as VectorIndex.scores."""
        k = min(k, self.size, MAX_TOPK)
        if k <= 0 or (allowed is not None and not allowed.any()):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        hits = self._search(self.target.scenes, query, k, allowed, _POSITION_FIELDS + ["vector"])
        self._trim()
        for hit in hits:
            self._keep(hit["entity"] | {"row": hit["row"]})
        self._fetch_frames([int(h["row"]) for h in hits])
        scores = np.asarray([h["distance"] for h in hits], dtype=np.float32)
        rows = np.asarray([h["row"] for h in hits], dtype=np.int64)
        order = np.lexsort((rows, -scores))
        return scores[order], rows[order]

    def frame_candidates(self, query: np.ndarray, k: int, limit: int, allowed: MilvusFilter | None = None) -> list[int]:
        """Rows of the scenes holding the k sample frames nearest the query, best first; [] on
        a collection of more than `limit` frames, as VectorIndex.frame_candidates."""
        if not 0 < self._frame_total <= limit or (allowed is not None and not allowed.any()):
            return []
        hits = self._search(self.target.frames, query, min(k, self._frame_total, MAX_TOPK), allowed, ["row"])
        ranked = sorted(((float(h["distance"]), int(h["entity"]["row"])) for h in hits), key=lambda h: -h[0])
        rows = [row for _, row in ranked]
        self._fetch_frames(list(set(rows)))
        return rows

    # -- what rows hold -------------------------------------------------------------------------------
    def _keep(self, entity: dict[str, Any]) -> int:
        row = int(entity["row"])
        self._positions[row] = ScenePosition(
            row=row, scene_id=entity["scene_id"], video_id=entity["video_id"],
            path=_untext(entity["path"], entity["raw_path"]), scene_index=int(entity["scene_index"]),
            start_time=float(entity["start_time"]), end_time=float(entity["end_time"]),
            sample_times=[float(t) for t in entity["sample_times"]], continues_shot=bool(entity["continues_shot"]))
        self._frame_counts[row] = int(entity["frame_count"])
        if "vector" in entity:
            self._scene_vectors[row] = np.asarray(entity["vector"], dtype=np.float32)
        return row

    def _trim(self) -> None:
        if len(self._positions) > _CACHE_ROWS:
            self._positions.clear()
            self._scene_vectors.clear()
            self._frames.clear()
            self._frame_counts.clear()
            self._column = None

    def _fetch_scenes(self, rows: list[int]) -> None:
        for a in range(0, len(rows), _QUERY_BATCH):
            with _milvus_errors(self.target):
                found = self.client.query(self.target.scenes, filter=f"row in {json.dumps(rows[a:a + _QUERY_BATCH])}",
                                          output_fields=_POSITION_FIELDS + ["vector"])
            for entity in found:
                self._keep(entity)

    def _fetch_frames(self, rows: list[int]) -> None:
        """The sample-frame vectors of these scenes, fetched by primary key (their positions
        are fetched first where not known)."""
        self._fetch_scenes([r for r in rows if r not in self._positions])
        wanted = [r for r in rows if r not in self._frames]
        keys = [frame_key(self._positions[r].scene_id, k) for r in wanted for k in range(self._frame_counts[r])]
        by_row: dict[int, list[tuple[int, list[float]]]] = {r: [] for r in wanted}
        for a in range(0, len(keys), _QUERY_BATCH):
            with _milvus_errors(self.target):
                found = self.client.get(self.target.frames, ids=keys[a : a + _QUERY_BATCH],
                                        output_fields=["row", "k", "vector"])
            for entity in found:
                by_row.setdefault(int(entity["row"]), []).append((int(entity["k"]), entity["vector"]))
        for row, frames in by_row.items():
            frames.sort(key=lambda f: f[0])
            self._frames[row] = np.asarray([f[1] for f in frames], dtype=np.float32).reshape(-1, self.dim)

    def position(self, row: int) -> ScenePosition:
        if row not in self._positions:
            self._fetch_scenes([int(row)])
        return self._positions[row]

    def frame_vectors(self, row: int) -> np.ndarray:
        if row not in self._frames:
            self._fetch_frames([int(row)])
        return self._frames[row]

    def scene_vector(self, row: int) -> np.ndarray:
        if row not in self._scene_vectors:
            self._fetch_scenes([int(row)])
        return self._scene_vectors[row]

    def row_of_scene(self, scene_id: str) -> int | None:
        with _milvus_errors(self.target):
            found = self.client.query(self.target.scenes, filter=f"scene_id == {_literal(scene_id)}",
                                      output_fields=_POSITION_FIELDS + ["vector"])
        return self._keep(found[0]) if found else None

    def rows_of_video(self, video_id: str) -> np.ndarray:
        with _milvus_errors(self.target):
            found = _query_all(self.client, self.target.scenes, f"video_id == {_literal(video_id)}",
                               _POSITION_FIELDS + ["vector"])
        rows = [self._keep(e) for e in sorted(found, key=lambda e: int(e["scene_index"]))]
        return np.asarray(rows, dtype=np.int64)


__all__ = ["MilvusTarget", "MilvusVectors", "collection_problems", "collection_state", 
           "parse_vector_store", "record_vector_store", "recorded_vector_store", "resolve_target",
           "sync_collection", "sync_recorded"]
