"""Text search finds the moment, with the toy CLIP (data/toy-clip): generated single-shot videos
in which a shape appears once for 1 or 2 s (the recall table's D = 1 and 2 s cases), and videos
with two shapes at different times. Indexed with the real CLI at default settings; found =
rank 1 is the video and its best time lies inside the appearance; export-frame shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, CliRun, data_module

TOY = REPO / "data" / "toy-clip"
SECONDS = 16.0


def _toy_videos():
    return data_module("toy_videos")


@pytest.fixture(scope="module")
def toy_model() -> list[str]:
    config, weights = TOY / "config.json", TOY / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        pytest.skip(f"toy CLIP not present: {TOY}")
    return ["--model", str(config), "--pretrained", str(weights)]


@pytest.fixture(scope="module")
def moments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """One folder: 3 videos with a 1 s appearance, 3 with a 2 s one, 2 with two 1 s appearances;
    no caption shown twice."""
    tv = _toy_videos()
    folder = tmp_path_factory.mktemp("moments")
    specs = (tv.moment_set(1.0, 3, 21, seconds=SECONDS, skip=1) + tv.moment_set(2.0, 3, 22, seconds=SECONDS, skip=4)
             + tv.moment_set(1.0, 2, 23, two=True, seconds=SECONDS, skip=7))
    videos = tv.build_set(folder, specs, seconds=SECONDS)
    captions = [a.caption for v in videos for a in v.appearances]
    assert len(set(captions)) == len(captions) == 10
    return folder, videos


def _search(cli: CliRun, caption: str) -> dict:
    return json.loads(cli("search", caption, "--top", "1", "--json", check=True).stdout)["results"][0]


def test_text_search_finds_the_video_and_the_moment(cli: CliRun, toy_model: list[str], moments: tuple[Path, list],
                                                    tmp_path: Path) -> None:
    folder, videos = moments
    cli("index", folder, *toy_model, check=True)
    from cliptool.search.searcher import Searcher

    searcher = Searcher(tmp_path / "index")
    missed = []
    for v in videos:
        for a in v.appearances:
            hit = searcher.search(searcher.text_vector(a.caption), top=1)[0]
            if not (Path(hit.path).name == v.name and a.start - 0.02 <= hit.best_time < a.end + 0.02):
                missed.append((v.name, a.caption, a.start, a.end, Path(hit.path).name, hit.best_time))
    assert not missed, missed

    # the CLI answers the same, and export-frame writes the moment (the shape is on screen)
    v = videos[0]
    a = v.appearances[0]
    result = _search(cli, a.caption)
    assert Path(result["path"]).name == v.name and a.start - 0.02 <= result["best_time"] < a.end + 0.02
    out = tmp_path / "moment.jpg"
    exported = json.loads(cli("export-frame", a.caption, "-o", out, "--json", check=True).stdout)
    assert Path(exported["video"]).name == v.name and a.start - 0.02 <= exported["time"] < a.end + 0.02, exported
