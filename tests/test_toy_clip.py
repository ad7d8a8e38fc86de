"""The toy CLIP of data/toy-clip (trained here on a world of coloured shapes): it knows its 16
captions on pictures it never saw, and text search finds the clip and the moment they name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.models.clip import ClipModel
from cliptool.models.spec import ModelSpec

from conftest import REPO, data_module, make_samples, run_here

TOY = REPO / "data" / "toy-clip"
CONFIG, WEIGHTS = TOY / "config.json", TOY / "weights.safetensors"

toy_world = data_module("toy_world")

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="data/toy-clip is not there")


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_caption_accuracy_on_fresh_pictures(precision: str) -> None:
    """Top-1 over the 16 captions on pictures drawn with a seed training never used, through
    the product's own loading, preprocessing and (for int8) exported image tower."""
    model = ClipModel(ModelSpec(str(CONFIG), str(WEIGHTS), precision))
    images, labels = toy_world.render_set(480, seed=31337, size=96, photos=toy_world.load_photos())
    image_vectors = model.encode_images(list(images))
    text_vectors = model.encode_text(toy_world.CAPTIONS)
    predicted = (image_vectors @ text_vectors.T).argmax(1)
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= 0.97, accuracy


@pytest.fixture(scope="module")
def shape_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the toy-world sample clips, plus a clip of words as a distractor (shapes.mp4
    would not do: it shows a red circle)."""
    folder = tmp_path_factory.mktemp("shape-clips")
    for name, segments in make_samples.SHAPE_SAMPLES.items():
        make_samples.write_clip(folder / name, segments)
    make_samples.write_clip(folder / "titles.mp4", make_samples.SAMPLES["titles.mp4"])  # no shapes: a distractor
    index_dir = tmp_path_factory.mktemp("shape-index")
    proc = _cliptool(index_dir, "index", folder, "--model", CONFIG, "--pretrained", WEIGHTS)
    assert proc.returncode == 0, proc.stderr
    return index_dir


def _cliptool(index_dir: Path, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir)}
    return subprocess.run([sys.executable, "-m", "cliptool", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("query, clip, start, end", [
    ("a yellow star", "garden-shapes.mp4", 9.0, 12.0),
    ("a red circle", "garden-shapes.mp4", 1.0, 4.0),
    ("a blue square", "parade.mp4", 2.0, 5.0),
    ("a green triangle", "parade.mp4", 8.0, 11.0),
])
def test_text_search_finds_the_clip_and_the_moment(shape_index: Path, query: str, clip: str, start: float,
                                                   end: float, tmp_path: Path) -> None:
    # the commands in this process: the queries, not a process start-up each, tell the cases apart
    proc = run_here(shape_index, "search", query, "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)["results"][0]
    assert Path(best["path"]).name == clip, best
    assert start <= best["best_time"] < end, best
    proc = run_here(shape_index, "export-frame", query, "-o", tmp_path / "frame.png", "--json")
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(proc.stdout)
    assert Path(exported["video"]).name == clip and start <= exported["time"] < end, exported
