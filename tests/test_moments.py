"""Sampling that follows the content (sample.ChangeSampler) and what the analysis pass hands on:
extra samples where the picture changes, a thumbnail per sample, continues_shot on records."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from cliptool.analysis.analyse import analyse_video
from cliptool.config import IndexOptions
from cliptool.media.decode import Frame
from cliptool.models.clip import ClipModel
from cliptool.models.spec import ModelSpec
from cliptool.analysis.sample import ChangeSampler, SceneCutter
from cliptool.store import SceneRecord

from conftest import data_module


def _toy_videos():
    return data_module("toy_videos")


@pytest.fixture(scope="module")
def model(tiny_model: tuple[Path, Path]) -> ClipModel:
    return ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"))


@pytest.fixture(scope="module")
def moment_video(tmp_path_factory: pytest.TempPathFactory):
    """A 16 s single shot with a shape on screen for 0.5 s."""
    tv = _toy_videos()
    folder = tmp_path_factory.mktemp("moment")
    (video,) = tv.build_set(folder, [("short.mp4", 5, [("a red star", 9.2, 9.7)])], seconds=16.0)
    return folder / "short.mp4", video.appearances[0]


def _noise(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height", [192, 144, 110])  # 4:3, 16:9 and 21:9 (the lowest bar)
def test_change_sampler_takes_what_appears_not_noise_or_slow_pans(height: int) -> None:
    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.uniform(70, 180, (6, 8, 3)), (256 + 40, height), interpolation=cv2.INTER_CUBIC)  # a muted photo
    sampler = ChangeSampler()
    side = int(0.2 * height)
    taken = []
    for i in range(250):  # 10 s at 25 fps: a pan of 4 px/s, and a square on screen from 4.0 to 4.5 s
        t = i / 25
        x = int(4 * t)
        frame = _noise(rng, scene[:, x:x + 256].astype(np.float64))
        if 4.0 <= t < 4.5:
            cv2.rectangle(frame, (128 - side // 2, height // 2 - side // 2), (128 + side // 2, height // 2 + side // 2),
                          (0, 0, 255), -1)
        if sampler.offer(t, frame):
            taken.append(t)
    assert any(4.0 <= t < 4.1 for t in taken), taken  # when it appears
    assert len([t for t in taken if not 4.0 <= t <= 4.6]) <= 2, taken  # the pan alone costs (almost) nothing


@pytest.mark.parametrize("whole", [True, False])
def test_change_sampler_sees_the_whole_frame_as_the_views_do(whole: bool) -> None:
    """A square in the left fifth of a 16:9 frame, or the top fifth of a 9:16 one, or a narrow
    box in the left fifth of a 21:9 frame, is a change when the views see the whole frame (the
    default), and outside what the centre square sees."""
    rng = np.random.default_rng(2)
    for w, h, box in ((320, 180, (10, 70, 50, 110)), (180, 320, (70, 10, 110, 50)), (420, 180, (14, 60, 24, 96))):
        scene = cv2.resize(rng.uniform(70, 180, (6, 8, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
        sampler = ChangeSampler(whole=whole)
        taken = []
        for i in range(100):  # 4 s, the square on screen from 2.0 to 2.5 s
            t = i / 25
            frame = _noise(rng, scene)
            if 2.0 <= t < 2.5:
                cv2.rectangle(frame, box[:2], box[2:], (0, 0, 255), -1)
            if sampler.offer(t, frame):
                taken.append(t)
        assert any(2.0 <= t < 2.1 for t in taken) == whole, (w, h, taken)


def test_change_sampler_rate_is_bounded() -> None:
    rng = np.random.default_rng(1)
    sampler = ChangeSampler(min_gap=0.3, mean_gap=2.0, burst=4)
    taken = []
    for i in range(25 * 20):  # 20 s of a different picture on every frame
        t = i / 25
        if sampler.offer(t, rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) // 2 + (i % 2) * 100):
            taken.append(t)
    gaps = np.diff(taken)
    assert len(taken) <= 4 + 20 / 2.0 + 1 and (gaps >= 0.3 - 1e-6).all(), taken


def test_change_sampler_skips_changes_over_the_whole_picture() -> None:
    sampler = ChangeSampler()
    a, b = np.full((90, 160, 3), 40, np.uint8), np.full((90, 160, 3), 200, np.uint8)
    assert not sampler.offer(0.0, a) and not sampler.offer(1.0, a) and not sampler.offer(2.0, b)


def test_extra_samples_go_to_the_window_that_holds_them() -> None:
    cutter = SceneCutter(4.0, 3, 100)  # windows of 4 s: samples 1 s apart, sparser than 0.75 s
    closed = []
    for i in range(200):  # 8 s at 25 fps: two windows of 4 s
        f = Frame(i, i / 25, None)
        closed += cutter.add_frame(f)
        if i in (30, 140):
            cutter.add_extra(f)
    closed += cutter.finish(8.0)
    assert [s.continues_shot for s in closed] == [False, True]
    assert 30 in [f.index for f in closed[0].samples] and 140 in [f.index for f in closed[1].samples]
    assert all(len(s.samples) == 4 for s in closed)
    assert all([f.index for f in s.samples] == sorted(f.index for f in s.samples) for s in closed)
    # a short scene's own samples are dense enough: it takes none
    short = SceneCutter(10.0, 3, 100)
    for i in range(50):
        short.add_frame(Frame(i, i / 25, None))
        if i == 10:
            short.add_extra(Frame(i, i / 25, None))
    (scene,) = short.finish(2.0)
    assert 10 not in [f.index for f in scene.samples] and len(scene.samples) == 3


def test_analysis_samples_a_short_moment_and_makes_thumbnails(model: ClipModel, moment_video) -> None:
    path, shown = moment_video
    new = analyse_video(path, model, IndexOptions(max_scene_seconds=5.0))
    old = analyse_video(path, model, IndexOptions(max_scene_seconds=5.0, change_threshold=0.0))
    inside = lambda a: [t for s in a.scenes for t in s.sample_times if shown.start <= t < shown.end]  # noqa: E731
    assert inside(new) and not inside(old)
    assert sum(len(s.sample_times) for s in new.scenes) <= sum(len(s.sample_times) for s in old.scenes) + 6
    # continues_shot on the records: one shot of 16 s in windows of at most 5 s
    assert [s.continues_shot for s in new.scenes] == [False, True, True, True] == new.continues_shot
    # a 320-px JPEG per sample, in sample_times order, matching the frame at that time
    assert len(new.thumbnails) == len(new.scenes)
    for scene, pictures, vecs in zip(new.scenes, new.thumbnails, new.vectors):
        assert len(pictures) == len(scene.sample_times) == len(vecs.frames)  # one view: the whole frame, squeezed
        for jpeg in pictures:
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[1] == 320
    k = next(i for i, s in enumerate(new.scenes) for t in s.sample_times if shown.start <= t < shown.end)
    j = next(i for i, t in enumerate(new.scenes[k].sample_times) if shown.start <= t < shown.end)
    img = cv2.imdecode(np.frombuffer(new.thumbnails[k][j], np.uint8), cv2.IMREAD_COLOR)
    red = (img[..., 2].astype(int) - img[..., 1].astype(int) > 100).mean()
    assert red > 0.01  # the red star is in the picture


def test_a_tap_gets_no_thumbnails(model: ClipModel, moment_video) -> None:
    class Every:
        def wants(self, frame: Frame) -> bool:
            return frame.index % 50 == 0

        def picture(self, frame: Frame, rgb: np.ndarray) -> bool:
            return True

    analysed = analyse_video(moment_video[0], model, IndexOptions(), tap=Every())
    assert analysed.thumbnails == [] and analysed.scenes


def test_old_scene_records_read_continues_shot_false() -> None:
    record = asdict(SceneRecord(0, 0.0, 1.0, 0, 25, [0.5], [12]))
    record.pop("continues_shot")
    assert SceneRecord(**record).continues_shot is False


# -- a hit is the moment ---------------------------------------------------------------------------
TOY = Path(__file__).resolve().parents[1] / "data" / "toy-clip"


@pytest.fixture(scope="module")
def long_shot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[float, float]]:
    """(index, video, appearance): a 30 s single shot with a yellow star on screen for 1 s,
    indexed with the toy CLIP in windows of at most 10 s."""
    from conftest import run_here

    tv = _toy_videos()
    folder = tmp_path_factory.mktemp("long-shot")
    (video,) = tv.build_set(folder, [("star.mp4", 3, [("a yellow star", 17.4, 18.4)])], seconds=30.0)
    index_dir = folder / "index"
    proc = run_here(index_dir, "index", folder / "star.mp4", "--max-scene", "10",
                    "--model", TOY / "config.json", "--pretrained", TOY / "weights.safetensors")
    assert proc.returncode == 0, proc.stderr
    a = video.appearances[0]
    return index_dir, folder / "star.mp4", (a.start, a.end)


def test_a_one_second_appearance_in_a_long_shot_is_a_short_hit_whatever_the_top(long_shot) -> None:
    import json

    from conftest import run_here

    index_dir, video, (start, end) = long_shot
    spans = []
    for top in ("1", "5", "50"):
        proc = run_here(index_dir, "search", "a yellow star", "--top", top, "--json")
        assert proc.returncode == 0, proc.stderr
        hit = json.loads(proc.stdout)["results"][0]
        spans.append((hit["start"], hit["end"], hit["best_time"]))
        assert (hit["shot_start"], hit["shot_end"]) == (0.0, pytest.approx(30.0, abs=0.05))
    assert spans[0] == spans[1] == spans[2], spans
    s, e, best = spans[0]
    assert s <= start + 0.04 and e >= end - 0.04, (spans[0], (start, end))  # it holds the appearance
    assert e - s <= 10.0 and start - 0.04 <= best <= end + 0.04


def test_a_clip_of_the_hit_lasts_the_moment(long_shot, tmp_path: Path) -> None:
    import json

    import av

    from conftest import run_here

    index_dir, video, _ = long_shot
    hit = json.loads(run_here(index_dir, "search", "a yellow star", "--top", "1", "--json").stdout)["results"][0]
    out = tmp_path / "clips"
    proc = run_here(index_dir, "clips", "a yellow star", "--top", "1", "--exact", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    (clip,) = json.loads(proc.stdout)["clips"]
    assert (clip["start"], clip["end"]) == (hit["start"], hit["end"])
    with av.open(str(out / clip["file"])) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in container.decode(stream)]
    assert abs((times[-1] - times[0] + 1 / 25) - (hit["end"] - hit["start"])) <= 0.08, (times[0], times[-1], hit)
