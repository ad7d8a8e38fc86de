"""Windows on real videos: cuts stay where the detector puts them, long shots split into equal
windows no longer than the limit, and keyframes' scenes are the index's scenes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cliptool.analysis.analyse import analyse_video
from cliptool.config import IndexOptions
from cliptool.models.clip import ClipModel
from cliptool.models.spec import ModelSpec
from cliptool.analysis.keyframes import KeyframeOptions, extract_keyframes

from conftest import shared
from test_detect import detect


@pytest.fixture(scope="module")
def model(tiny_model: tuple[Path, Path]) -> ClipModel:
    return ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"))


@pytest.mark.parametrize("video", [("scenes", "bikes.mp4"), ("content", "vtest.avi"), ("content", "cockatoo.mp4")])
def test_cuts_are_kept_and_long_shots_split_equally(model: ClipModel, video: tuple[str, str]) -> None:
    path = shared(*video)
    cuts, _ = detect(path)
    analysed = analyse_video(path, model, IndexOptions(max_scene_seconds=5.0))
    scenes = analysed.scenes
    assert [s.start_frame for s, cont in zip(scenes, analysed.continues_shot) if not cont] == [0, *cuts]
    assert all(s.end_time - s.start_time <= 5.0 + 1e-6 for s in scenes)
    assert all(a.end_frame == b.start_frame for a, b in zip(scenes, scenes[1:]))
    # a shot's last two windows share its remainder: no sliver
    shots: list[list] = []
    for s, cont in zip(scenes, analysed.continues_shot):
        shots[-1:] = [shots[-1] + [s]] if cont else shots[-1:] + [[s]]
    for shot in shots:
        if len(shot) >= 2:
            a, b = (s.end_time - s.start_time for s in shot[-2:])
            assert abs(a - b) <= 0.11, (a, b)
            assert min(s.end_time - s.start_time for s in shot) >= 2.5 - 0.11


def test_keyframes_scenes_are_the_index_scenes(model: ClipModel, tmp_path: Path) -> None:
    path = shared("scenes", "testvideo.mp4")
    options = KeyframeOptions(use_index=False, max_scene_seconds=4.0)
    analysed = analyse_video(path, model, options.analysis())
    manifest = extract_keyframes(path, tmp_path / "k", lambda: model, model.spec.identity(), options, progress=False)
    assert [(s["start_frame"], s["end_frame"], s["start"], s["end"]) for s in manifest["scenes"]] == \
        [(s.start_frame, s.end_frame, s.start_time, s.end_time) for s in analysed.scenes]
    assert len(manifest["scenes"]) > 4  # windows as well as cuts
    assert manifest["keyframes"]
