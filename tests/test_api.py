"""The public Python API (`import cliptool`), as the Python API example of docs/web-app-and-api.md uses it, on real parts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import cliptool
from conftest import REPO


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], tiny_model) -> tuple[cliptool.Index, Path]:
    folder = tmp_path_factory.mktemp("api-videos")
    for name, src in sample_clips.items():
        shutil.copy2(src, folder / name)
    config, ckpt = tiny_model
    index = cliptool.Index.open(tmp_path_factory.mktemp("api-index"))
    summary = index.index([folder], model=str(config), pretrained=str(ckpt), progress=False, report=lambda m: None)
    assert (summary.added, summary.failed) == (3, [])
    return index, folder


def test_import_is_light() -> None:
    code = "import sys, cliptool; print(sorted(m for m in ('numpy', 'torch', 'faiss', 'plyvel') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_search_similar_and_status(indexed: tuple[cliptool.Index, Path], tmp_path: Path) -> None:
    index, folder = indexed
    status = index.status()
    assert (status["videos"], status["cache"]) == (3, "current")
    record, scenes = index.scenes(folder / "shapes.mp4")
    assert record.path == str((folder / "shapes.mp4").resolve()) and len(scenes) == record.scene_count

    hits = index.search("a red circle", top=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].score >= hits[-1].score
    assert len({h.path for h in index.search("a red circle", top=10, videos=True)}) == 3

    scene = scenes[len(scenes) // 2]
    still = tmp_path / "still.png"
    index.export_frame(still, video=folder / "shapes.mp4", at=scene.sample_times[0])
    best = index.search(image=still, top=1)[0]
    assert best.path == record.path and best.start <= scene.sample_times[0] < best.end

    like = index.similar(best.scene_id, top=3)
    assert len(like) == 3 and best.scene_id not in {h.scene_id for h in like}
    assert [h.rank for h in like] == [1, 2, 3]
    with pytest.raises(cliptool.UsageError, match="no scene"):
        index.similar("nope/0/00000")
    with pytest.raises(cliptool.UsageError):
        index.search()


def test_the_index_run_makes_a_thumbnail_per_sample(indexed: tuple[cliptool.Index, Path]) -> None:
    from cliptool.analysis.thumbnails import WIDTH, path_for

    index, folder = indexed
    for name in ("shapes.mp4", "outdoors.mp4"):
        _, scenes = index.scenes(folder / name)
        for scene in scenes:
            for k in range(len(scene.sample_times)):
                picture = cv2.imread(str(path_for(index.directory, scene.scene_id, k)))
                assert picture is not None and picture.shape[1] == WIDTH


def test_export_frame_and_keyframes(indexed: tuple[cliptool.Index, Path], tmp_path: Path) -> None:
    index, folder = indexed
    out = tmp_path / "best.jpg"
    result = index.export_frame(out, "stripes")
    assert cv2.imread(str(out)).shape[:2] == (result.height, result.width)
    manifest = index.keyframes(folder / "shapes.mp4", tmp_path / "pictures")
    assert manifest["keyframes"] and json.loads((tmp_path / "pictures" / "manifest.json").read_text()) == manifest
    assert all((tmp_path / "pictures" / k["file"]).is_file() for k in manifest["keyframes"])


def test_a_long_lived_index_sees_later_commits(indexed: tuple[cliptool.Index, Path], tmp_path: Path, sample_clips, tiny_model) -> None:
    index, folder = indexed
    before = index.search("anything", top=50, videos=True)
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy2(sample_clips["shapes.mp4"], extra / "again.mp4")
    subprocess.run([sys.executable, "-c", (
        "import sys, cliptool; cliptool.Index.open(sys.argv[1]).index([sys.argv[2]], model=sys.argv[3], "
        "pretrained=sys.argv[4], progress=False)"), str(index.directory), str(extra), *map(str, tiny_model)],
        check=True, capture_output=True, text=True)
    after = index.search("anything", top=50, videos=True)
    assert len(after) == len(before) + 1
    assert str((extra / "again.mp4").resolve()) in {h.path for h in after}


def test_progress_counts_seconds_of_video_with_rate_and_time_left(tmp_path: Path, folder: Path, tiny_model,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """One long video must not sit at 0/1: the bar follows the seconds decoded (the three sample
    clips: 6 + 5 + 4 s), with the speed and the time left."""
    config, ckpt = tiny_model
    cliptool.Index(tmp_path / "ix").index([folder], model=str(config), pretrained=str(ckpt), progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("indexing: 100%") and "| 15/15 s of video [" in final, final
    assert "s/s]" in final and "<00:00" in final, final  # seconds of video a second; nothing left
    updates = [line for line in err.replace("\r", "\n").splitlines() if "s of video" in line]
    assert len({line.split("|")[2].split(" s of video")[0] for line in updates}) >= 3  # it moved within the run
