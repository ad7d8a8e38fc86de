"""The index's contents: its status, one video with all its scenes, and a scene or video opened
in the user's own player (only on a loopback bind)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request

from cliptool.errors import CliptoolError, one_line
from cliptool.store import IndexStore
from cliptool.serve.errors import ApiError
from cliptool.serve.state import ServeState


def make_router(state: ServeState) -> APIRouter:
    """The routes /api/status, /api/videos/{video_id} and /api/open, over `state`."""
    router = APIRouter()

    @router.get("/api/status")
    def api_status() -> Any:
        return state.status()

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
