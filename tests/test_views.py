"""What the image tower sees of a frame (models.views): every part of it. A shape only in the
left fifth of a 16:9 shot, or the top fifth of a 9:16 one, is found at the right time, the
whole frame squeezed (the default) or in tiles; with the centre square alone it is not seen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cliptool.models.views import frame_views, per_sample, tile_count, view_count, whole
from cliptool.search.searcher import sample_scores
from conftest import REPO, data_module, run_here

TOY = REPO / "data" / "toy-clip"


def test_tiles_cover_every_frame_shape_edge_to_edge() -> None:
    assert [tile_count(*s) for s in ((360, 360), (480, 360), (640, 360), (840, 360), (360, 640))] == [1, 2, 3, 4, 3]
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :64] = 255  # the left tenth white
    frame[:, -64:] = 128  # the right tenth grey
    views = frame_views(frame, 36, mean, std, "tiles")
    assert views.shape == (3, 3, 36, 36)
    assert views[0][:, :, :3].min() > 0.9 and views[-1][:, :, -3:].mean() == pytest.approx(128 / 255, abs=0.02)
    centre = frame_views(frame, 36, mean, std, "centre")
    assert centre.shape == (1, 3, 36, 36) and centre.max() == 0.0  # the edges never reach the centre square
    assert view_count(640, 360, "pad") == 2 and frame_views(frame, 36, mean, std, "pad").shape == (2, 3, 36, 36)
    assert frame_views(frame, 36, mean, std, "squeeze").shape == (1, 3, 36, 36)
    assert per_sample(6, 2) == 3 and per_sample(2, 2) == 1 and per_sample(5, 2) == 1
    rows = np.array([[c, np.sqrt(1 - c * c)] for c in (0.1, 0.5, 0.2, 0.3, 0.0, 0.9)], np.float32)
    times, scores = sample_scores(rows, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], np.array([1.0, 0.0], np.float32))
    assert times == [1.0, 2.0] and list(np.round(scores, 6)) == [0.5, 0.9]  # each sample: its best view
    assert np.linalg.norm(whole(np.eye(3, dtype=np.float32))) == pytest.approx(1.0)


@pytest.mark.parametrize("frame,views,found", [("16:9", "squeeze", True), ("9:16", "squeeze", True),
                                                ("16:9", "tiles", True), ("16:9", "centre", False)])
def test_a_shape_at_the_edge_of_the_frame_is_found_at_its_time(tmp_path: Path, frame: str, views: str,
                                                              found: bool) -> None:
    if not (TOY / "weights.safetensors").is_file():
        pytest.skip("no toy CLIP")
    tv = data_module("toy_videos")
    video = tmp_path / "edge.mp4"
    tv.write_framed(video, frame, "side", "a yellow star", 3.0, 4.5, 8.0, seed=5)
    index_dir = tmp_path / "index"
    proc = run_here(index_dir, "index", video, "--views", views, "--model", TOY / "config.json",
                    "--pretrained", TOY / "weights.safetensors")
    assert proc.returncode == 0, proc.stderr
    hit = json.loads(run_here(index_dir, "search", "a yellow star", "--json").stdout)["results"][0]
    if found:  # seen: the star's own score (the toy CLIP gives a visible shape about 0.5), at its time
        assert 3.0 - 0.04 <= hit["best_time"] <= 4.5 + 0.04 and hit["score"] > 0.35, hit
        assert hit["start"] <= 3.04 and hit["end"] >= 4.46, hit
    else:  # the centre square never holds it: nothing scores like a shape
        assert hit["score"] < 0.25, hit  # (the toy CLIP keeps pictures without the shape under about 0.25-0.4)


def test_keyframes_see_the_whole_frame_and_reuse_the_index_views(tmp_path: Path) -> None:
    """A star only in the left fifth of a 16:9 shot is a moment of its own for `keyframes` with
    the whole frame (the default), and a near-duplicate with the centre square; an index made with
    tiles lends its vectors (each sample's whole picture) and its views."""
    if not (TOY / "weights.safetensors").is_file():
        pytest.skip("no toy CLIP")
    tv = data_module("toy_videos")
    video = tmp_path / "edge.mp4"
    tv.write_framed(video, "16:9", "side", "a yellow star", 3.0, 4.5, 8.0, seed=5)
    model = ["--model", TOY / "config.json", "--pretrained", TOY / "weights.safetensors"]
    kept = {}
    for views in ("squeeze", "centre"):
        proc = run_here(tmp_path / "no-index", "keyframes", video, "-o", tmp_path / views, "--views", views,
                        "--no-quality-filter", "--json", *model)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads(proc.stdout)
        assert manifest["views"] == views
        kept[views] = [k["time"] for k in manifest["keyframes"]]
    assert len(kept["squeeze"]) == 2 and sum(3.0 <= t <= 4.5 for t in kept["squeeze"]) == 1, kept
    assert len(kept["centre"]) == 1, kept  # the star is never in the centre square: one moment only
    index_dir = tmp_path / "index"
    assert run_here(index_dir, "index", video, "--views", "tiles", *model).returncode == 0
    proc = run_here(index_dir, "keyframes", video, "-o", tmp_path / "from-index", "--no-quality-filter", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["views"] == "tiles" and manifest["counts"]["from_index"] > 0, manifest["counts"]
    assert sum(3.0 <= k["time"] <= 4.5 for k in manifest["keyframes"]) == 1, manifest["keyframes"]
