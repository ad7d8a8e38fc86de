"""Media and pictures, by id only: a video file (with Range), a scene's thumbnail, a frame at a
time. The path of a file is always the index's, never the request's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from cliptool.errors import CliptoolError, one_line
from cliptool.serve import media
from cliptool.serve.errors import ApiError
from cliptool.serve.params import one_param
from cliptool.serve.state import ServeState


def make_router(state: ServeState) -> APIRouter:
    """The routes /media/{video_id}, /thumb/{scene_id}/{k}.jpg and /frame/{video_id}, over `state`."""
    router = APIRouter()

    @router.api_route("/media/{video_id}", methods=["GET", "HEAD"])
    def media_file(video_id: str, request: Request) -> Response:
        record, _ = state.video(video_id)
        try:
            return media.file_response(record.path, request.headers.get("range"), media.content_type(record.path),
                                       head=request.method == "HEAD")
        except OSError:
            raise ApiError(404, "the video file is gone or unreadable") from None

    @router.get("/thumb/{video_id}/{version}/{number}/{sample}.jpg")
    def thumb(video_id: str, version: str, number: str, sample: str) -> Response:
        if not sample.isdigit() or len(sample) > 3:
            raise ApiError(404, "no such thumbnail")
        try:
            data = state.thumbnail(f"{video_id}/{version}/{number}", int(sample))
        except CliptoolError as exc:
            raise ApiError(404, f"no picture: {one_line(exc)}") from None
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

    @router.get("/frame/{video_id}")
    def frame(video_id: str, request: Request) -> Response:
        raw = one_param(request, "t")
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

    return router
