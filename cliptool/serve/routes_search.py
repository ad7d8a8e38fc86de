"""Searching: by words (GET /api/search: q, and words said or shown: said, shows, a chain of
then=... steps within= seconds apart; see docs/query-syntax.md), by an uploaded image (POST /api/search, multipart,
at most UPLOAD_LIMIT) and by a scene already indexed (GET /api/similar). Each takes top, videos
(each video once, by its best scene) and the CLI's filters (params.filters_param: in, since,
until, min_duration, max_duration, min_score)."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from cliptool.errors import UsageError, one_line
from cliptool.serve.errors import ApiError, error_response
from cliptool.serve.params import filters_param, flag_param, int_param, one_param
from cliptool.serve.state import UPLOAD_LIMIT, ServeState

if TYPE_CHECKING:
    from cliptool.search.filters import Filters

DRAIN_LIMIT = 128 * 1024 * 1024  # an oversized upload is read (and dropped) up to this, then cut off
MAX_TOP = 500


def make_router(state: ServeState) -> APIRouter:
    """The routes GET and POST /api/search and GET /api/similar, over `state`."""
    router = APIRouter()

    @router.get("/api/search")
    def api_search(request: Request) -> Any:
        q = one_param(request, "q")
        said, shows = one_param(request, "said") or None, one_param(request, "shows") or None
        then = [t for t in request.query_params.getlist("then") if t.strip()]
        within_text = one_param(request, "within")
        top = int_param(one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = flag_param(one_param(request, "videos"), "videos")
        where = filters_param(request)
        wordy = bool(said or shows or then)
        if (q is None or not q.strip()) and not (said or shows):
            raise ApiError(400, "empty query: give some words (q=...), said=..., shows=... or POST an image")
        if any(len(x) > 1000 for x in [q or "", said or "", shows or "", *then]) or len(then) > 8:
            raise ApiError(400, "query too long (at most 1000 characters a term, 8 then steps)")
        within = None
        if within_text:
            from cliptool.search.filters import parse_duration

            within = parse_duration(within_text, "within")
        with state.lock:
            hits = state.index.search(q if q and q.strip() else None, top=top, videos=videos, where=where,
                                      said=said, shows=shows, then=then, within=within)
        return {"query": q, "image": None, **({"said": said, "shows": shows, "then": then, "within": within}
                                              if wordy else {}),
                "filters": filters_json(where), "results": [state.hit_json(h) for h in hits]}

    @router.get("/api/words")
    def api_words(request: Request) -> Any:
        video = one_param(request, "video")
        if not video:
            raise ApiError(400, "give video=VIDEO_ID")
        record, _ = state.video(video)  # 404 unless it is indexed
        from cliptool.vectors.fulltext import words_between

        with state.lock:
            words = words_between(state.index_dir, record.video_id)
        return {"video_id": record.video_id, "words": [w.to_dict() for w in words]}

    @router.post("/api/search")
    async def api_search_image(request: Request) -> Any:
        top = int_param(one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = flag_param(one_param(request, "videos"), "videos")
        where = filters_param(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, "send the image as multipart/form-data, field 'image'")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
            return error_response(413, f"upload too large (at most {UPLOAD_LIMIT // (1024 * 1024)} MB)",
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
            return error_response(413, f"upload too large (at most {UPLOAD_LIMIT // (1024 * 1024)} MB)")
        data = await _image_field(request, bytes(body))
        name = "upload"
        results = await run_in_threadpool(_search_image, state, data, top, videos, where)
        return {"query": None, "image": name, "filters": filters_json(where), "results": results}

    @router.get("/api/similar")
    def api_similar(request: Request) -> Any:
        scene = one_param(request, "scene")
        top = int_param(one_param(request, "top"), "top", 10, 1, MAX_TOP)
        videos = flag_param(one_param(request, "videos"), "videos")
        other = flag_param(one_param(request, "other"), "other")
        where = filters_param(request)
        if not scene:
            raise ApiError(400, "give scene=SCENE_ID (a search result's scene_id)")
        source = state.scene_json(scene)  # 404 unless it is an indexed scene
        with state.lock:
            try:
                if other or where is not None:  # other: leave out the scene's whole video
                    hits = state.index.similar_scene(scene, top=top, videos=videos, other_videos=other, where=where)
                else:
                    hits = state.index.similar(scene, top=top, videos=videos)
            except UsageError as exc:
                raise ApiError(404, one_line(exc)) from None
        return {"query": None, "image": None, "scene_id": scene, "scene": source, "filters": filters_json(where),
                "results": [state.hit_json(h) for h in hits]}

    return router


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


def filters_json(where: Filters | None) -> dict[str, Any]:
    """The filters a search applied, as the answer echoes them (dates in seconds since the epoch)."""
    if where is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in where.to_dict().items()}


def _search_image(state: ServeState, data: bytes, top: int, videos: bool, where: Filters | None) -> list[dict[str, Any]]:
    import cv2
    import numpy as np

    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        raise ApiError(400, "not a readable image (JPEG, PNG, WebP, BMP or TIFF)")
    fd, tmp = tempfile.mkstemp(prefix="cliptool-query-", suffix=".img")  # the system's temp dir
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with state.lock:
            hits = state.index.search(image=tmp, top=top, videos=videos, where=where)
        return [state.hit_json(h) for h in hits]
    finally:
        os.unlink(tmp)
