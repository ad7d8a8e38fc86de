"""Image search by frames taken from the shared real videos: rank 1 is a scene that contains the
frame's time. vtest.avi (a fixed camera: every scene looks alike) is left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliptool.bench.recall import image_containment
from cliptool.models.spec import ModelSpec
from cliptool.index.indexer import index_paths

from conftest import SHARED

VIDEOS = ["scenes/bikes.mp4", "scenes/testvideo.mp4", "scenes/goldeneye-vfr-drop3.mp4", "content/cockatoo.mp4",
          "content/Megamind.avi", "content/cityCC0.mpg", "content/pool_cleaning.mp4"]


@pytest.fixture(scope="module")
def indexed(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    videos = [SHARED / v for v in VIDEOS if (SHARED / v).is_file()]
    if len(videos) < 4:
        pytest.skip(f"shared test videos not present under {SHARED}")
    index_dir = tmp_path_factory.mktemp("real") / "index"
    index_paths(videos, index_dir, ModelSpec(str(tiny_model[0]), str(tiny_model[1])), report=lambda m: None,
                progress=False)
    return index_dir, videos


def test_a_frame_of_a_real_video_finds_the_scene_that_holds_it(indexed: tuple[Path, list[Path]]) -> None:
    index_dir, videos = indexed
    found = image_containment(index_dir, videos, per_video=12, rankings=("frames",))
    scene = found["frames"]
    video = found["frames:video"]
    assert np.mean(list(video.values())) >= 0.9, video
    assert np.mean(list(scene.values())) >= 0.9, scene
