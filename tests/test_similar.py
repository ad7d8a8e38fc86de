"""`cliptool similar VIDEO --at TIME` and `similar --scene ID`: a re-encoded, resized copy of a
video finds its twin scene at rank 1; the scene (and with --other-videos its video) is left out."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import ok, one_line_error, run, run_here, shared



def reencode(source: Path, target: Path, width: int, bitrate: int) -> None:
    """A copy at another size and bitrate (PyAV, H.264), frame for frame with the same times."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        vs = src.streams.video[0]
        rate = vs.average_rate or Fraction(25)
        height = round(vs.codec_context.height * width / vs.codec_context.width / 2) * 2
        ovs = out.add_stream("libx264", rate=rate)
        ovs.width, ovs.height, ovs.pix_fmt, ovs.bit_rate = width, height, "yuv420p", bitrate
        ovs.options = {"preset": "veryfast", "g": "12", "bf": "0"}
        for i, frame in enumerate(src.decode(vs)):
            f = frame.reformat(width=width, height=height, format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, 1) / rate
            for packet in ovs.encode(f):
                out.mux(packet)
        for packet in ovs.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], model_args: list[str]):
    original = shared("scenes", "bikes.mp4")
    root = tmp_path_factory.mktemp("similar-videos")
    shutil.copy(original, root / "bikes.mp4")
    reencode(original, root / "bikes-small.mp4", width=320, bitrate=150_000)
    for name in ("shapes.mp4", "outdoors.mp4", "titles.mp4"):
        shutil.copy(sample_clips[name], root / name)
    index_dir = tmp_path_factory.mktemp("similar-index")
    ok(run(index_dir, "index", root, *model_args))
    return index_dir, root


def scenes(index_dir: Path, video: Path) -> list[dict]:
    return json.loads(ok(run_here(index_dir, "scenes", video, "--json")).stdout)["scenes"]


def test_a_resized_reencoded_copy_finds_its_twin_scene_at_rank_1(library: tuple[Path, Path]) -> None:
    index_dir, root = library
    original, copy = scenes(index_dir, root / "bikes.mp4"), scenes(index_dir, root / "bikes-small.mp4")
    assert len(copy) == len(original) >= 5
    for twin, scene in zip(original, copy):
        t = (scene["start_time"] + scene["end_time"]) / 2
        data = json.loads(ok(run_here(index_dir, "similar", root / "bikes-small.mp4", "--at", t, "--json",
                                      "--top", "3")).stdout)
        assert data["scene_id"] == scene["scene_id"] and data["at"] == pytest.approx(t)
        best = data["results"][0]
        assert Path(best["path"]) == root / "bikes.mp4", (t, data["results"])
        assert best["scene_id"] == twin["scene_id"], (t, data["results"])
        assert all(r["scene_id"] != scene["scene_id"] for r in data["results"])
        assert set(best) >= {"rank", "score", "path", "start", "end", "best_time", "scene_id", "scene_index", "video_id"}


def test_scene_id_left_out_and_other_videos_leaves_out_its_video(library: tuple[Path, Path]) -> None:
    index_dir, root = library
    scene = scenes(index_dir, root / "bikes.mp4")[2]
    plain = json.loads(ok(run(index_dir, "similar", "--scene", scene["scene_id"], "--json", "-n", "50")).stdout)
    ids = [r["scene_id"] for r in plain["results"]]
    assert scene["scene_id"] not in ids and len(ids) == len(set(ids))
    assert [r["rank"] for r in plain["results"]] == list(range(1, len(ids) + 1))
    assert any(Path(r["path"]) == root / "bikes.mp4" for r in plain["results"])  # its other scenes
    others = json.loads(ok(run(index_dir, "similar", "--scene", scene["scene_id"], "--other-videos", "--json",
                               "-n", "5")).stdout)["results"]
    assert len(others) == 5 and all(Path(r["path"]) != root / "bikes.mp4" for r in others)
    assert Path(others[0]["path"]) == root / "bikes-small.mp4"
    by_video = json.loads(ok(run(index_dir, "similar", "--scene", scene["scene_id"], "--videos", "--json",
                                 "-n", "50")).stdout)["results"]
    paths = [r["path"] for r in by_video]
    assert len(paths) == len(set(paths)) == 5  # every video once, its own by its next best scene
    table = ok(run(index_dir, "similar", "--scene", scene["scene_id"], "--top", "2")).stdout.splitlines()
    assert table[0].split()[:5] == ["#", "score", "start", "end", "best"] and len(table) == 3


def test_similar_errors_are_one_line(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, root = library  # `similar` in this process: one new process per case shows no more
    one_line_error(run_here(index_dir, "similar"), 2, "--scene")
    one_line_error(run_here(index_dir, "similar", root / "bikes.mp4"), 2, "--at")
    one_line_error(run_here(index_dir, "similar", root / "bikes.mp4", "--at", "soon"), 2, "not a time")
    one_line_error(run_here(index_dir, "similar", root / "bikes.mp4", "--at", "99:00"), 2, "no moment at")
    one_line_error(run_here(index_dir, "similar", tmp_path / "nope.mp4", "--at", "1"), 2, "not in the index")
    one_line_error(run_here(index_dir, "similar", "--scene", "nope/0/00000"), 2, "no scene")
    one_line_error(run_here(index_dir, "similar", root / "bikes.mp4", "--at", "1", "--scene", "x"), 2, "not both")
