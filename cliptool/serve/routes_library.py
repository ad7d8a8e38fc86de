"""The index's contents: its status, the library (the videos, newest first, each with a few of
its scenes), one video with all its scenes, and a scene or video opened in the user's own player
(only on a loopback bind)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request

from cliptool.errors import CliptoolError, one_line
from cliptool.store import IndexStore
from cliptool.serve.errors import ApiError
from cliptool.serve.params import filters_param, int_param, one_param
from cliptool.serve.state import ServeState

MAX_LIMIT = 100  # videos in one page of the library
MAX_SCENES = 50  # scenes shown per video in the library
MAX_OFFSET = 10_000_000
MAX_FOLDERS = 200


def make_router(state: ServeState) -> APIRouter:
    """The routes /api/status, /api/library, /api/videos/{video_id} and /api/open, over `state`."""
    router = APIRouter()

    @router.get("/api/status")
    def api_status() -> Any:
        return state.status()

    @router.get("/api/library")
    def api_library(request: Request) -> Any:
        """One page of the indexed videos, newest file date first: limit videos from offset, each
        with at most `scenes` of its scenes; narrowed by the search filters (not min_score);
        `folders`: the folders that hold indexed videos, most videos first."""
        limit = int_param(one_param(request, "limit"), "limit", 12, 1, MAX_LIMIT)
        offset = int_param(one_param(request, "offset"), "offset", 0, 0, MAX_OFFSET)
        most = int_param(one_param(request, "scenes"), "scenes", 12, 0, MAX_SCENES)
        where = filters_param(request)
        if where is not None and where.min_score is not None:
            raise ApiError(400, "min_score applies to searches, not to the library")
        records = state.library()
        matched = [r for r in records if where.allows(r)] if where is not None else records
        videos = []
        for record in matched[offset:offset + limit]:
            try:
                current, scenes = state.video(record.video_id)
            except ApiError:  # removed since the list was read
                continue
            videos.append(state.library_json(current, scenes, most))
        folders = Counter(os.path.dirname(r.path) for r in records)
        return {"total": len(matched), "offset": offset, "limit": limit, "videos": videos,
                "folders": [{"path": f, "videos": n}
                            for f, n in sorted(folders.items(), key=lambda x: (-x[1], x[0]))[:MAX_FOLDERS]]}

    @router.get("/api/videos/{video_id}")
    def api_video(video_id: str) -> Any:
        record, _ = state.video(video_id)
        with state.lock:
            with IndexStore(state.index_dir) as store:
                scenes = [s for s in store.scenes(record)] if store.get_video(video_id) == record else None
        if scenes is None:
            raise ApiError(503, "the video was re-indexed just now; try again")
        return state.video_json(record, scenes)

    @router.post("/api/open")
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
        from cliptool.writers.player import NoPlayerError, play

        try:
            command = play(record.path, float(t))
        except NoPlayerError as exc:
            raise ApiError(501, str(exc)) from None
        except CliptoolError as exc:
            raise ApiError(500, one_line(exc)) from None
        return {"player": command.name, "seeks": command.seeks, "video_id": record.video_id, "t": float(t)}

    return router
