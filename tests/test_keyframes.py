"""`cliptool keyframes`: one picture per distinct photo of a real-photo slideshow, blanks and blur
dropped, repeats folded, clusters, chapters, index reuse, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cliptool.analysis.keyframes import (
    KeyframeOptions,
    adaptive_threshold,
    contiguous_segments,
    extract_keyframes,
    scene_clusters,
    segment_moments,
    silhouette,
)
from cliptool.analysis.quality import blank_reason, blurry, measure

from conftest import make_samples, shared

FPS = 25
W, H = 320, 240
HOLD = 60  # frames each photo is shown (2.4 s)
BLACK = 12  # frames of each inserted black gap
PHOTOS = ["astronaut", "coffee", "rocket", "chelsea", "page", "coins"]
# Two photos come back later; two black gaps.
TIMELINE = ["astronaut", "coffee", "black", "rocket", "chelsea", "astronaut", "page", "black", "coffee", "coins"]


def _photo_painter(path: Path, seed: int):  # type: ignore[no-untyped-def]
    """The photo, slowly panning a few pixels, with a little sensor-like noise on every frame."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (W + 16, H + 12), interpolation=cv2.INTER_AREA)

    def paint(i: int, w: int, h: int) -> np.ndarray:
        rng = np.random.default_rng(seed * 1000 + i)
        dx = min(i // 10, 6)
        frame = image[4 : 4 + h, dx : dx + w].astype(np.int16) + rng.normal(0, 2, (h, w, 3)).astype(np.int16)
        return np.clip(frame, 0, 255).astype(np.uint8)

    return paint


def _black(i: int, w: int, h: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, int]]]:
    """(video, [(photo or "black", first frame, end frame)])."""
    folder = shared("images")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg")}
    missing = [p for p in PHOTOS if p not in files]
    if missing:
        pytest.skip(f"shared photos missing: {missing}")
    painters = {name: _photo_painter(files[name], k) for k, name in enumerate(PHOTOS)}
    segments = [(_black, BLACK) if name == "black" else (painters[name], HOLD) for name in TIMELINE]
    path = tmp_path_factory.mktemp("slideshow") / "slideshow.mp4"
    make_samples.write_clip(path, segments, fps=FPS, size=(W, H))
    spans, start = [], 0
    for name, (_, n) in zip(TIMELINE, segments):
        spans.append((name, start, start + n))
        start += n
    return path, spans


def _what(spans: list[tuple[str, int, int]], frame: int) -> tuple[int, str]:
    for k, (name, a, b) in enumerate(spans):
        if a <= frame < b:
            return k, name
    raise AssertionError(f"frame {frame} outside the video")


@pytest.fixture(scope="module")
def clip_model(tiny_model: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec

    config, ckpt = tiny_model
    return ClipModel(ModelSpec(str(config), str(ckpt)))


def _extract(video: Path, out: Path, model, **options) -> dict:  # type: ignore[no-untyped-def]
    return extract_keyframes(video, out, lambda: model, model.spec.identity(), KeyframeOptions(**options),
                             progress=False)


def test_slideshow_one_keyframe_per_distinct_photo(cli, model_args, slideshow, tmp_path: Path) -> None:
    video, spans = slideshow
    out = tmp_path / "frames"
    proc = cli("keyframes", video, "-o", out, "--chapters", *model_args)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    kfs = manifest["keyframes"]

    # exactly one picture per distinct photo; none of a black gap; repeats give no second picture
    shown = [_what(spans, k["frame"])[1] for k in kfs]
    assert sorted(shown) == sorted(PHOTOS), shown
    for k in kfs:
        assert {"file", "time", "frame", "scene", "reason"} <= set(k)
        assert k["reason"]

    # the repeated photos are listed as repeats of the keyframe of their first showing
    file_of = {_what(spans, k["frame"])[1]: k["file"] for k in kfs}
    for seg, (name, a, b) in enumerate(spans):
        if name != "black" and TIMELINE.index(name) != seg:
            repeats = [d for d in manifest["dropped"] if a <= d["frame"] < b and d["reason"].startswith("repeat")]
            assert repeats, f"no repeat listed for the second showing of {name}"
            assert all(d["same_as"] == file_of[name] for d in repeats)

    # black gaps: their candidates are dropped as black
    for name, a, b in spans:
        if name == "black":
            reasons = [d["reason"] for d in manifest["dropped"] if a <= d["frame"] < b]
            assert reasons and set(reasons) == {"black"}, reasons

    # images: full resolution, names in time order, nothing else written
    names = [k["file"] for k in kfs]
    assert names == sorted(names)
    assert [k["time"] for k in kfs] == sorted(k["time"] for k in kfs)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["manifest.json"])
    for k in kfs:
        image = cv2.imread(str(out / k["file"]))
        assert image.shape == (H, W, 3)
        assert k["file"].endswith(".jpg") and k["file"].startswith(f"{kfs.index(k):04d}_00-00-")

    # chapters: contiguous, in time order, covering every keyframe
    chapters = manifest["chapters"]
    assert chapters[0]["start"] == 0.0
    assert [c["start"] for c in chapters] == sorted(c["start"] for c in chapters)
    assert [k["chapter"] for k in kfs] == sorted(k["chapter"] for k in kfs)
    assert sum(c["keyframes"] for c in chapters) == len(kfs)
    # ... and said on the command line: each picture's chapter, each chapter's span, their count
    listed = [line for line in proc.stdout.splitlines() if line.startswith("chapter ")]
    assert len(listed) == len(chapters) and listed[0].startswith("chapter 1  00:00:00.000-")
    assert all(line.endswith(f"  chapter {k['chapter'] + 1}") for line, k in
               zip([ln for ln in proc.stdout.splitlines() if not ln.startswith("chapter ")], kfs))
    assert f"{len(kfs)} pictures in {len(chapters)} chapter" in proc.stderr



def test_count_auto_finds_the_photos_and_count_is_exact(clip_model, slideshow, tmp_path: Path) -> None:
    video, spans = slideshow
    manifest = _extract(video, tmp_path / "auto", clip_model, auto_count=True, min_count=2, max_count=10)
    shown = [_what(spans, k["frame"])[1] for k in manifest["keyframes"]]
    assert sorted(shown) == sorted(PHOTOS), (shown, manifest["count_chosen_by"])
    assert manifest["count"] == len(PHOTOS)

    manifest = _extract(video, tmp_path / "auto", clip_model, count=3, image_format="png")
    assert len(manifest["keyframes"]) == 3
    shown = [_what(spans, k["frame"])[1] for k in manifest["keyframes"]]
    assert len(set(shown)) == 3 and "black" not in shown
    # the second run into the same folder replaced the first one's images
    files = sorted(p.name for p in (tmp_path / "auto").iterdir())
    assert files == sorted([k["file"] for k in manifest["keyframes"]] + ["manifest.json"])
    assert all(f.endswith(".png") for f in files if f != "manifest.json")


def test_keep_repeats_and_keep_blank(clip_model, slideshow, tmp_path: Path) -> None:
    video, spans = slideshow
    manifest = _extract(video, tmp_path / "repeats", clip_model, keep_repeats=True)
    shown = [_what(spans, k["frame"])[1] for k in manifest["keyframes"]]
    photo_spans = [name for name in TIMELINE if name != "black"]
    assert sorted(shown) == sorted(photo_spans)  # one per showing, the repeats included

    manifest = _extract(video, tmp_path / "blank", clip_model, blank_filter=False)
    shown = [_what(spans, k["frame"])[1] for k in manifest["keyframes"]]
    assert "black" in shown
    assert not [d for d in manifest["dropped"] if d["reason"] == "black"]


def _detailed(i: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.repeat(np.repeat(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    cv2.putText(img, f"{i % 4}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    if 25 <= i < 45:  # a stretch of strong blur, as from a fast camera move
        img = cv2.GaussianBlur(img, (0, 0), 5)
    return img


def test_blurry_frames_are_dropped_relative_to_their_neighbours(clip_model, tmp_path: Path) -> None:
    video = tmp_path / "blur.mp4"
    make_samples.write_clip(video, [(_detailed, 75)], fps=FPS, size=(W, H))
    manifest = _extract(video, tmp_path / "out", clip_model)
    blurred = [d for d in manifest["dropped"] if d["reason"] == "blurry"]
    assert blurred and all(25 <= d["frame"] < 45 for d in blurred)
    assert all(d["sharpness"] < 0.3 * d["local_median_sharpness"] for d in blurred)
    assert all(not 25 <= k["frame"] < 45 for k in manifest["keyframes"])
    sharp_candidates = 75 / FPS * 3 - len(blurred)
    assert len(blurred) >= 2 and sharp_candidates >= 6

    manifest = _extract(video, tmp_path / "keep", clip_model, blur_filter=False)
    assert not [d for d in manifest["dropped"] if d["reason"] == "blurry"]


def test_reuses_index_scenes_and_vectors(cli, model_args, slideshow, tmp_path: Path) -> None:
    video, spans = slideshow
    # an index that sees each frame as keyframes do (its centre square): its vectors are reused
    assert cli("index", video, "--views", "centre", *model_args).returncode == 0
    indexed = json.loads(cli("scenes", video, "--json", check=True).stdout)
    out = tmp_path / "frames"
    proc = cli("keyframes", video, "-o", out, "--json")  # the model comes from the index
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["detector"] == "index"
    assert [s["start_frame"] for s in manifest["scenes"]] == [s["start_frame"] for s in indexed["scenes"]]
    assert manifest["counts"]["from_index"] > 0
    shown = [_what(spans, k["frame"])[1] for k in manifest["keyframes"]]
    assert sorted(shown) == sorted(PHOTOS)


def test_bad_input_is_one_line_and_nonzero(cli_here, model_args, tmp_path: Path) -> None:
    cases = [
        (["keyframes", tmp_path / "nope.mp4", "-o", tmp_path / "o"], 2),
        (["keyframes", tmp_path / "bad.mp4", "-o", tmp_path / "o", "--count", "many"], 2),
        (["keyframes", tmp_path / "bad.mp4", "-o", tmp_path / "o", "--format", "gif"], 2),
        (["keyframes", tmp_path / "bad.mp4", "-o", tmp_path / "o", "--detector", "magic"], 2),
        (["keyframes", tmp_path / "bad.mp4", "-o", tmp_path / "o", *model_args], 7),
    ]
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 100)
    for args, code in cases:
        proc = cli_here(*args)  # the CLI in this process: the arguments tell the cases apart
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cliptool: error:"), proc.stderr


# -- the parts, on data whose answer is known -------------------------------------------------------
def test_quality_measures() -> None:
    rng = np.random.default_rng(0)
    black = np.zeros((144, 256, 3), np.uint8)
    black[:1, :1] = 255  # a stray bright pixel does not make a picture
    white = np.full((144, 256, 3), 250, np.uint8)
    grey = np.full((144, 256, 3), 128, np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (144, 256, 3)).copy()
    texture = rng.integers(0, 256, (144, 256, 3), dtype=np.uint8)
    assert blank_reason(measure(black)) == "black"
    assert blank_reason(measure(white)) == "white"
    assert blank_reason(measure(grey)) == "solid colour"
    assert blank_reason(measure(ramp)) == "low detail"
    assert blank_reason(measure(texture)) is None
    sharp = measure(texture).sharpness
    soft = measure(cv2.GaussianBlur(texture, (0, 0), 3)).sharpness
    assert blurry([sharp, sharp * 0.9, soft, sharp * 1.1]) == [False, False, True, False]
    assert blurry([sharp, soft]) == [False, False]  # too few frames to judge


def test_threshold_adapts_to_the_scale_of_the_video() -> None:
    rng = np.random.default_rng(1)
    same = rng.uniform(0.001, 0.01, 200)
    cuts = rng.uniform(0.3, 0.9, 8)
    t, info = adaptive_threshold(same, cuts)
    assert 0.01 < t < 0.3 and info["cut_pairs"] == 8
    t_small, _ = adaptive_threshold(same * 0.1, cuts * 0.1)  # a model with 10x tighter similarities
    assert t_small == pytest.approx(t * 0.1, rel=1e-6)
    t_none, info = adaptive_threshold(same, np.zeros(0))  # no cuts and no change: only drift counts
    assert t_none == pytest.approx(2 * np.quantile(same, 0.9)) and "no clear change" in info["rule"]


def test_moments_clusters_and_chapters_respect_scenes() -> None:
    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=16) for _ in range(3))
    noisy = lambda v, n: v + rng.normal(scale=0.05, size=(n, 16))  # noqa: E731
    vectors = np.vstack([noisy(a, 5), noisy(b, 5), noisy(a, 5), noisy(c, 5)])
    scenes = [0] * 10 + [1] * 10  # scene 0 holds a then b; scene 1 holds a again then c
    moments = segment_moments(vectors[:10], 0.2)
    assert [m for m, _ in moments] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]

    clusters = scene_clusters(vectors, scenes, 4, repeat_threshold=None)
    assert len(clusters) == 4
    assert all(len({scenes[i] for i in cl}) == 1 for cl in clusters)  # no cluster crosses the cut
    assert sorted(map(sorted, clusters)) == [list(range(k, k + 5)) for k in (0, 5, 10, 15)]
    best = max(range(2, 7), key=lambda k: silhouette(vectors, scene_clusters(vectors, scenes, k, None)))
    assert best == 4

    chapters = contiguous_segments(np.vstack([noisy(a, 4), noisy(b, 4), noisy(c, 4)]))
    assert chapters == [list(range(0, 4)), list(range(4, 8)), list(range(8, 12))]


def test_index_holding_every_vector_needs_no_model(cli_here, tiny_model, tmp_path: Path) -> None:
    """With an index whose samples are as dense as --step, keyframes embed nothing: the model is
    never loaded, so the same keyframes come out after its files are gone; a run that must embed
    then fails in one line."""
    import shutil

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config, ckpt = (Path(shutil.copy2(p, model_dir / p.name)) for p in tiny_model)
    video = tmp_path / "shapes.mp4"
    make_samples.write_clip(video, make_samples.SAMPLES["shapes.mp4"])  # three 2 s shots
    proc = cli_here("index", video, "--views", "centre", "--samples", "3", "--model", config, "--pretrained", ckpt)
    assert proc.returncode == 0, proc.stderr
    runs = {}
    for when in ("with", "without"):
        proc = cli_here("keyframes", video, "-o", tmp_path / when, "--step", "1", "--json")
        assert proc.returncode == 0, (when, proc.stderr)
        runs[when] = json.loads(proc.stdout)
        assert runs[when]["counts"]["embedded"] == 0 and runs[when]["counts"]["from_index"] > 0, runs[when]["counts"]
        config.unlink(missing_ok=True)  # the model's files gone: it cannot be loaded
        ckpt.unlink(missing_ok=True)
    assert runs["without"] == runs["with"] and runs["with"]["keyframes"]
    for k in runs["with"]["keyframes"]:
        assert (tmp_path / "without" / k["file"]).read_bytes() == (tmp_path / "with" / k["file"]).read_bytes()
    proc = cli_here("keyframes", video, "-o", tmp_path / "denser", "--step", "0.25")  # candidates to embed
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 6 and len(lines) == 1 and "TinyCLIP.json" in lines[0], proc.stderr
