"""The routes of `cliptool serve`: the page, its JSON API under /api, media and thumbnails.

Everything a request names is an id looked up in the index (a video id, a scene id); no path
is ever taken from a request. One `cliptool.Index` (and so one searcher) serves every request,
guarded by one lock: the searcher is brought up to date on each query (`Searcher.refresh`), and
the stores are opened only briefly, by one thread at a time, with the store's own retry while an
index run holds them. Video records are cached per index generation.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from cliptool.analysis import thumbnails
from cliptool.api import Index
from cliptool.errors import CliptoolError, IndexBusyError, IndexMismatchError, IndexMissingError, UsageError, one_line
from cliptool.store import IndexStore, SceneRecord, VideoRecord, generation
from cliptool.serve import media
from cliptool.serve.security import Guard, is_loopback

UPLOAD_LIMIT = 20 * 1024 * 1024
DRAIN_LIMIT = 128 * 1024 * 1024  # an oversized upload is read (and dropped) up to this, then cut off
MAX_TOP = 500
CACHED_SCENES = 500_000  # scenes kept in memory between requests (~150 bytes each)
STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
log = logging.getLogger("cliptool.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(exc: CliptoolError) -> int:
    if isinstance(exc, IndexMissingError):
        return 404
    if isinstance(exc, IndexBusyError):
        return 503
    if isinstance(exc, IndexMismatchError):
        return 409
    return 400


class _Scene:
    """What a request needs of a scene, small: 100k of them take ~15 MB, not SceneRecord's ~70."""

    __slots__ = ("scene_id", "index", "start_time", "end_time", "sample_times")

    def __init__(self, s: SceneRecord) -> None:
        self.scene_id, self.index = s.scene_id, s.index
        self.start_time, self.end_time = s.start_time, s.end_time
        self.sample_times = tuple(s.sample_times)


class ServeState:
    """What every request shares: the index, its lock, caches of records and frames."""

    def __init__(self, index_dir: Path, *, host: str, port: int, token: str | None) -> None:
        self.index_dir = Path(index_dir)
        self.index = Index.open(self.index_dir, text_runtime="onnxruntime")
        self.host, self.port, self.token = host, port, token
        self.loopback = is_loopback(host)
        self.lock = threading.RLock()
        # video id -> (generation, record, scenes), least recently used first, at most
        # CACHED_SCENES scenes in all (a long video has thousands)
        self._videos: OrderedDict[str, tuple[str, VideoRecord | None, list[_Scene]]] = OrderedDict()
        self._cached_scenes = 0
        self._status: tuple[str, float, dict[str, Any]] | None = None
        self._frames: OrderedDict[tuple[str, str, float], bytes] = OrderedDict()
        self._frames_lock = threading.Lock()
        self.decoding = threading.BoundedSemaphore(2)  # frames decoded at once (thumbnails made on request)

    # -- records ---------------------------------------------------------------------------------
    def video(self, video_id: str) -> tuple[VideoRecord, list[_Scene]]:
        """An indexed video's record and scenes (cached until the next commit); 404 if none."""
        if not _ID.match(video_id or ""):
            raise ApiError(404, "no such video")
        gen = generation(self.index_dir)
        cached = self._videos.get(video_id)
        if cached is None or cached[0] != gen:
            with self.lock:
                gen = generation(self.index_dir)
                try:
                    with IndexStore(self.index_dir) as store:
                        record = store.get_video(video_id)
                        scenes = [_Scene(x) for x in store.scenes(record)] if record is not None else []
                except IndexMissingError:
                    record, scenes = None, []
                old = self._videos.pop(video_id, None)
                self._cached_scenes -= len(old[2]) if old else 0
                self._videos[video_id] = cached = (gen, record, scenes)
                self._cached_scenes += len(scenes)
                while (self._cached_scenes > CACHED_SCENES or len(self._videos) > 4096) and len(self._videos) > 1:
                    _, (_, _, dropped) = self._videos.popitem(last=False)
                    self._cached_scenes -= len(dropped)
        else:
            with self.lock:
                if video_id in self._videos:
                    self._videos.move_to_end(video_id)
        if cached[1] is None:
            raise ApiError(404, "no such video")
        return cached[1], cached[2]

    def scene(self, scene_id: str) -> tuple[VideoRecord, _Scene]:
        parts = (scene_id or "").split("/")
        if len(parts) != 3 or not all(_ID.match(p) for p in parts) or not parts[2].isdigit():
            raise ApiError(404, "no such scene")
        record, scenes = self.video(parts[0])
        number = int(parts[2])
        if number >= len(scenes) or scenes[number].scene_id != scene_id:
            raise ApiError(404, "no such scene (re-indexed since? search again)")
        return record, scenes[number]

    # -- JSON shapes -----------------------------------------------------------------------------
    def hit_json(self, hit: Any) -> dict[str, Any]:
        d = hit.to_dict()
        d["name"] = os.path.basename(hit.path)
        d["media"] = f"/media/{hit.video_id}#t={hit.start:.3f},{hit.end:.3f}"
        try:
            record, scene = self.scene(hit.scene_id)
        except ApiError:
            d.update(thumbnail=None, frames=[], sample_times=[], type=None, duration=None)
            return d
        frames = [_thumb_url(scene.scene_id, k) for k in range(len(scene.sample_times))]
        d["thumbnail"] = frames[_nearest(scene.sample_times, hit.best_time)] if frames else None
        d["frames"] = frames
        d["sample_times"] = scene.sample_times
        d["type"] = media.browser_type(record.path, record.codec)
        d["duration"] = record.duration
        return d

    def video_json(self, record: VideoRecord, scenes: list[SceneRecord]) -> dict[str, Any]:
        rec = {k: getattr(record, k) for k in ("video_id", "path", "size", "mtime", "duration", "fps", "width",
                                                "height", "frame_count", "scene_count", "codec", "model",
                                                "indexed_at", "version")}
        return {
            "video": rec, "name": os.path.basename(record.path), "media": f"/media/{record.video_id}",
            "type": media.browser_type(record.path, record.codec),
            "scenes": [{"scene_id": s.scene_id, "scene_index": s.index, "start": s.start_time, "end": s.end_time,
                        "start_frame": s.start_frame, "end_frame": s.end_frame, "sample_times": s.sample_times,
                        "thumbnail": _thumb_url(s.scene_id, len(s.sample_times) // 2) if s.sample_times else None,
                        "frames": [_thumb_url(s.scene_id, k) for k in range(len(s.sample_times))]}
                       for s in scenes],
        }

    def status(self) -> dict[str, Any]:
        gen = generation(self.index_dir)
        now = time.monotonic()
        if self._status is not None and self._status[0] == gen and now - self._status[1] < 2.0:
            return self._status[2]
        with self.lock:
            try:
                info = self.index.status()
                info["missing"] = False
            except IndexMissingError:
                info = {"index_dir": str(self.index_dir), "model": None, "videos": 0, "scenes": 0, "hours": 0.0,
                        "cache": "missing", "missing": True}
        info["generation"] = gen
        info["server"] = {"loopback": self.loopback, "open_player": self.loopback, "token": self.token is not None,
                          "upload_limit": UPLOAD_LIMIT}
        self._status = (gen, now, info)
        return info

    # -- pictures --------------------------------------------------------------------------------
    def thumbnail(self, scene_id: str, k: int) -> bytes:
        record, scene = self.scene(scene_id)
        if not 0 <= k < len(scene.sample_times):
            raise ApiError(404, "no such thumbnail")
        data = thumbnails.read(self.index_dir, scene_id, k)
        if data is not None:
            return data
        with self.decoding:
            return thumbnails.make(self.index_dir, record, scene, k)

    def frame(self, video_id: str, t: float) -> bytes:
        record, _ = self.video(video_id)
        if not (t >= 0 and t <= max(record.duration, 0.0) + 1.0):
            raise ApiError(400, f"t must be between 0 and the video's duration ({record.duration:.3f} s)")
        key = (video_id, record.version, round(t, 3))
        with self._frames_lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        from cliptool.media.decode import frame_at

        with self.decoding:
            _, rgb = frame_at(Path(record.path), t)
        data = thumbnails.encode(rgb)
        with self._frames_lock:
            self._frames[key] = data
            while len(self._frames) > 512:
                self._frames.popitem(last=False)
        return data


def _thumb_url(scene_id: str, k: int) -> str:
    return f"/thumb/{scene_id}/{k}.jpg"


def _nearest(times: list[float], t: float) -> int:
    return min(range(len(times)), key=lambda i: abs(times[i] - t)) if times else 0


def _int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not lo <= n <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return n


def _flag(value: str | None, name: str) -> bool:
    if value in (None, "", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"{name} must be 0 or 1")


def _one_param(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"give {name} once")
    return values[0] if values else None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(Exception(message)) if "\n" in message else message},
                        status_code=status, headers={"cache-control": "no-store", **(headers or {})})


def create_app(index_dir: Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Any:
    """The ASGI app (FastAPI behind the security middleware) for an index directory."""
    state = ServeState(index_dir, host=host, port=port, token=token)
    app = FastAPI(title="cliptool", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cliptool = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(CliptoolError)
    async def _cliptool_error(request: Request, exc: CliptoolError) -> JSONResponse:
        return _error(_status_of(exc), one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return _error(exc.status_code, {"Not Found": "not found", "Method Not Allowed": "method not allowed"}
                      .get(message, message))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return _error(400, f"bad parameter {where}: {first.get('msg', 'invalid')}".strip())

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.warning("cliptool serve: %s %s failed: %s: %s", request.method, request.url.path,
                    type(exc).__name__, one_line(exc))
        return _error(500, f"internal error ({type(exc).__name__}); the server is still up")

    # -- the page ------------------------------------------------------------------------------
    @app.get("/")
    def page() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff",
                                 "referrer-policy": "no-referrer", "x-frame-options": "DENY",
                                 "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; "
                                 "media-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC_FILES:
            raise ApiError(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_FILES[name],
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    # -- the API -------------------------------------------------------------------------------
    @app.get("/api/status")
    def api_status() -> Any:
        return state.status()

    @app.get("/api/search")
    def api_search(request: Request) -> Any:
        q = _one_param(request, "q")
        top = _int(_one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = _flag(_one_param(request, "videos"), "videos")
        if q is None or not q.strip():
            raise ApiError(400, "empty query: give some words (q=...) or POST an image")
        if len(q) > 1000:
            raise ApiError(400, "query too long (at most 1000 characters)")
        with state.lock:
            hits = state.index.search(q, top=top, videos=videos)
        return {"query": q, "image": None, "results": [state.hit_json(h) for h in hits]}

    @app.post("/api/search")
    async def api_search_image(request: Request) -> Any:
        top = _int(_one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = _flag(_one_param(request, "videos"), "videos")
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, "send the image as multipart/form-data, field 'image'")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
            return _error(413, f"upload too large (at most {UPLOAD_LIMIT // (1024 * 1024)} MB)",
                          {"connection": "close"})
        body = bytearray()
        too_big, total = False, 0
        async for chunk in request.stream():
            total += len(chunk)
            if too_big or len(body) + len(chunk) > UPLOAD_LIMIT:
                too_big = True  # read on (dropping it) so the client hears the answer
                body.clear()
                if total > DRAIN_LIMIT:
                    break
                continue
            body += chunk
        if too_big:
            return _error(413, f"upload too large (at most {UPLOAD_LIMIT // (1024 * 1024)} MB)")
        data = await _image_field(request, bytes(body))
        name = "upload"
        results = await run_in_threadpool(_search_image, state, data, top, videos)
        return {"query": None, "image": name, "results": results}

    @app.get("/api/similar")
    def api_similar(request: Request) -> Any:
        scene = _one_param(request, "scene")
        top = _int(_one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = _flag(_one_param(request, "videos"), "videos")
        other = _flag(_one_param(request, "other"), "other")
        if not scene:
            raise ApiError(400, "give scene=SCENE_ID (a search result's scene_id)")
        state.scene(scene)  # 404 unless it is an indexed scene
        with state.lock:
            try:
                if other:  # leave out the scene's whole video
                    hits = state.index.similar_scene(scene, top=top, videos=videos, other_videos=True)
                else:
                    hits = state.index.similar(scene, top=top, videos=videos)
            except UsageError as exc:
                raise ApiError(404, one_line(exc)) from None
        return {"query": None, "image": None, "scene_id": scene, "results": [state.hit_json(h) for h in hits]}

    @app.get("/api/videos/{video_id}")
    def api_video(video_id: str) -> Any:
        record, _ = state.video(video_id)
        with state.lock:
            with IndexStore(state.index_dir) as store:
                scenes = [s for s in store.scenes(record)] if store.get_video(video_id) == record else None
        if scenes is None:
            raise ApiError(503, "the video was re-indexed just now; try again")
        return state.video_json(record, scenes)

    @app.post("/api/open")
    async def api_open(request: Request) -> Any:
        if not state.loopback:
            raise ApiError(403, "open in player works only when the server is bound to loopback")
        try:
            payload = await request.json()
        except Exception:  # noqa: BLE001 - any bad body
            raise ApiError(400, "send JSON: {\"scene\": SCENE_ID} or {\"video\": VIDEO_ID, \"t\": SECONDS}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "send a JSON object")
        if isinstance(payload.get("scene"), str):
            record, scene = state.scene(payload["scene"])
            t = payload.get("t", scene.start_time)
        elif isinstance(payload.get("video"), str):
            record, _ = state.video(payload["video"])
            t = payload.get("t", 0.0)
        else:
            raise ApiError(400, "give scene or video")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= record.duration + 1:
            raise ApiError(400, "t must be a time in seconds inside the video")
        if not os.path.isfile(record.path):
            raise ApiError(404, "the video file is gone")
        from cliptool.serve.player import open_in_player

        try:
            player = open_in_player(record.path, float(t))
        except LookupError as exc:
            raise ApiError(501, str(exc)) from None
        except OSError as exc:
            raise ApiError(500, f"cannot start the player: {exc.strerror or exc}") from None
        return {"player": player, "video_id": record.video_id, "t": float(t)}

    # -- media and pictures, by id only ---------------------------------------------------------
    @app.api_route("/media/{video_id}", methods=["GET", "HEAD"])
    def media_file(video_id: str, request: Request) -> Response:
        record, _ = state.video(video_id)
        try:
            return media.file_response(record.path, request.headers.get("range"), media.content_type(record.path),
                                       head=request.method == "HEAD")
        except OSError:
            raise ApiError(404, "the video file is gone or unreadable") from None

    @app.get("/thumb/{video_id}/{version}/{number}/{sample}.jpg")
    def thumb(video_id: str, version: str, number: str, sample: str) -> Response:
        if not sample.isdigit() or len(sample) > 3:
            raise ApiError(404, "no such thumbnail")
        try:
            data = state.thumbnail(f"{video_id}/{version}/{number}", int(sample))
        except CliptoolError as exc:
            raise ApiError(404, f"no picture: {one_line(exc)}") from None
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

    @app.get("/frame/{video_id}")
    def frame(video_id: str, request: Request) -> Response:
        raw = _one_param(request, "t")
        try:
            t = float(raw) if raw is not None else float("nan")
        except ValueError:
            t = float("nan")
        if t != t:
            raise ApiError(400, "give t=SECONDS")
        try:
            data = state.frame(video_id, t)
        except CliptoolError as exc:
            raise ApiError(404, f"no picture: {one_line(exc)}") from None
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

    return Guard(app, bound_host=host, port=port, token=token)


async def _image_field(request: Request, body: bytes) -> bytes:
    async def replay() -> dict[str, Any]:
        nonlocal body
        chunk, body = body, b""
        return {"type": "http.request", "body": chunk, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors, Starlette's limits
        raise ApiError(400, f"malformed multipart upload ({one_line(exc) or type(exc).__name__})") from None
    item = form.get("image")
    if item is None or isinstance(item, str):
        raise ApiError(400, "multipart field 'image' (a file) is missing")
    data = await item.read()
    await form.close()
    if not data:
        raise ApiError(400, "the uploaded image is empty")
    return data


def _search_image(state: ServeState, data: bytes, top: int, videos: bool) -> list[dict[str, Any]]:
    import cv2
    import numpy as np

    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        raise ApiError(400, "not a readable image (JPEG, PNG, WebP, BMP or TIFF)")
    fd, tmp = tempfile.mkstemp(prefix="cliptool-query-", suffix=".img")  # the system's temp dir
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with state.lock:
            hits = state.index.search(image=tmp, top=top, videos=videos)
        return [state.hit_json(h) for h in hits]
    finally:
        os.unlink(tmp)
