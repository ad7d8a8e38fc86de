"""End to end through the `cliptool` command line on real files, with the seeded tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, SHARED, make_samples, run_here, shared


def run(index_dir: Path, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cliptool", *map(str, args)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cliptool: error: "), proc.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path]) -> Path:
    """A folder of several videos: the sample clips, plus real ones when the shared data is there."""
    root = tmp_path_factory.mktemp("library")
    for name, path in sample_clips.items():
        target = root / ("nested" if name == "titles.mp4" else "") / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    if (SHARED / "scenes").is_dir():
        for name in ("bikes.mp4", "counter.mp4"):
            shutil.copy(SHARED / "scenes" / name, root / name)
    return root


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, library: Path, model_args: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    index_dir = tmp_path_factory.mktemp("index")
    proc = ok(run(index_dir, "index", library, *model_args))
    return index_dir, proc


def scene_list(index_dir: Path, video: Path) -> list[dict]:
    return json.loads(ok(run(index_dir, "scenes", video, "--json")).stdout)["scenes"]


def test_index_reports_a_summary_and_status_counts_everything(indexed: tuple[Path, subprocess.CompletedProcess], library: Path) -> None:
    index_dir, proc = indexed
    n_videos = len(list(library.rglob("*.mp4")))
    assert f"indexed {n_videos} new" in proc.stderr
    status = json.loads(ok(run(index_dir, "status", "--json")).stdout)
    assert status["videos"] == n_videos
    assert status["scenes"] >= n_videos
    assert status["model"]["name"].endswith("TinyCLIP.json")
    assert all(status["bytes"][k] > 0 for k in ("videos", "scenes", "embeddings", "faiss"))
    for name in ("videos.ldb", "scenes.ldb", "embeddings.ldb"):
        assert (index_dir / name / "CURRENT").is_file()


def test_scenes_follow_the_cuts_of_the_generated_clip(indexed: tuple[Path, subprocess.CompletedProcess], library: Path) -> None:
    index_dir, _ = indexed
    scenes = scene_list(index_dir, library / "shapes.mp4")
    assert [(s["start_frame"], s["end_frame"]) for s in scenes] == [(0, 50), (50, 100), (100, 150)]
    assert [s["start_time"] for s in scenes] == pytest.approx([0.0, 2.0, 4.0])
    for s in scenes:
        assert len(s["sample_times"]) == 3
        assert all(s["start_time"] < t < s["end_time"] for t in s["sample_times"])
    table = ok(run(index_dir, "scenes", library / "shapes.mp4")).stdout
    assert "00:00:02.000" in table


def test_search_by_a_frame_finds_its_video_and_scene(indexed: tuple[Path, subprocess.CompletedProcess], library: Path, tmp_path: Path) -> None:
    index_dir, _ = indexed
    videos = [p for p in sorted(library.rglob("*.mp4"))]
    for video in videos:  # the scenes and the still through the CLI in this process, the search in a new one
        scenes = json.loads(ok(run_here(index_dir, "scenes", video, "--json")).stdout)["scenes"]
        scene = scenes[len(scenes) // 2]
        t = scene["sample_times"][1 if len(scene["sample_times"]) > 1 else 0]
        still = tmp_path / f"{video.stem}.png"
        ok(run_here(index_dir, "export-frame", "--video", video, "--at", t, "-o", still))
        results = json.loads(ok(run(index_dir, "search", "--image", still, "--json", "--top", "3")).stdout)["results"]
        best = results[0]
        assert Path(best["path"]) == video, (video, results)
        assert best["start"] <= t < best["end"], (t, best)
        assert best["score"] == pytest.approx(max(r["score"] for r in results))


def test_text_search_table_and_json(indexed: tuple[Path, subprocess.CompletedProcess], library: Path) -> None:
    index_dir, _ = indexed
    table = ok(run(index_dir, "search", "a red circle", "--top", "4")).stdout.splitlines()
    assert table[0].split()[:5] == ["#", "score", "start", "end", "best"]
    assert len(table) == 5
    data = json.loads(ok(run(index_dir, "search", "a red circle", "--json", "-n", "50")).stdout)
    results = data["results"]
    assert data["query"] == "a red circle"
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert set(results[0]) == {"rank", "score", "path", "start", "end", "best_time", "scene_id", "scene_index", "video_id",
                              "scene_ids", "shot_start", "shot_end"}
    by_video = json.loads(ok(run(index_dir, "search", "a red circle", "--videos", "--json", "-n", "50")).stdout)["results"]
    paths = [r["path"] for r in by_video]
    assert len(paths) == len(set(paths)) == len(list(library.rglob("*.mp4")))
    assert by_video[0]["score"] == results[0]["score"]


def test_the_int8_text_tower_answers_near_the_exact_one(indexed: tuple[Path, subprocess.CompletedProcess]) -> None:
    index_dir, _ = indexed
    query = ("search", "a red circle", "--json", "-n", "8")
    exact = json.loads(ok(run(index_dir, *query)).stdout)["results"]
    int8 = json.loads(ok(run(index_dir, "--text-precision", "int8", *query)).stdout)["results"]
    by_env = json.loads(ok(run(index_dir, *query, env={"CLIPTOOL_TEXT_PRECISION": "int8"})).stdout)["results"]
    assert by_env == int8
    exact_scores = {r["scene_id"]: r["score"] for r in exact}
    shared_ids = [r["scene_id"] for r in int8 if r["scene_id"] in exact_scores]
    assert len(shared_ids) >= 6
    diffs = [abs(r["score"] - exact_scores[r["scene_id"]]) for r in int8 if r["scene_id"] in exact_scores]
    assert max(diffs) < 0.02 and max(diffs) > 0  # near the exact vector, and not it
    # the same first hit, or one the exact tower scores within the int8 error of it (a near tie)
    assert exact_scores.get(int8[0]["scene_id"], -1.0) >= exact[0]["score"] - 2 * max(diffs), (int8[:2], exact[:2])
    assert_one_line_error(run(index_dir, "--text-precision", "int4", *query), 2, "--text-precision")


def test_an_index_exported_before_int8_towers_gets_one_on_its_next_run(
        tmp_path: Path, sample_clips: dict[str, Path], model_args: list[str]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(sample_clips["shapes.mp4"], folder)
    index_dir = tmp_path / "index"
    ok(run(index_dir, "index", folder, *model_args))
    meta_path = index_dir / "textenc-onnx" / "textenc.json"
    meta = json.loads(meta_path.read_text())
    del meta["int8"]
    (index_dir / "old.json").write_text(json.dumps(meta))
    os.replace(index_dir / "old.json", meta_path)  # a new file: the user cache's hard-linked one stays
    proc = ok(run(index_dir, "--text-precision", "int8", "search", "a red circle"))
    assert "older than int8 towers" in proc.stderr and "using the exact text tower" in proc.stderr
    assert "shapes.mp4" in proc.stdout
    assert "text:    ONNX Runtime, exact; no int8 variant (the export is older" in ok(run(index_dir, "status")).stdout
    ok(run(index_dir, "index", folder))
    assert json.loads(meta_path.read_text())["int8"]["file"] == "text-int8.onnx"
    tower = json.loads(ok(run(index_dir, "status", "--json")).stdout)["text_tower"]
    assert tower["path"] == "onnxruntime" and tower["int8"]["min_cosine"] >= 0.99
    assert "--text-precision int8 available" in ok(run(index_dir, "status")).stdout
    proc = ok(run(index_dir, "--text-precision", "int8", "search", "a red circle"))
    assert proc.stderr.strip() == "" and "shapes.mp4" in proc.stdout


def test_export_frame_writes_a_full_resolution_image(indexed: tuple[Path, subprocess.CompletedProcess], library: Path, tmp_path: Path) -> None:
    index_dir, _ = indexed
    out = tmp_path / "best.jpg"
    result = json.loads(ok(run(index_dir, "export-frame", "stripes", "-o", out, "--json")).stdout)
    top = json.loads(ok(run(index_dir, "search", "stripes", "--json", "-n", "1")).stdout)["results"][0]
    assert result["video"] == top["path"] and top["start"] <= result["time"] < top["end"]  # the scene search ranks first
    image = cv2.imread(str(out))
    assert image is not None
    assert (image.shape[1], image.shape[0]) == (result["width"], result["height"])
    with_video = tmp_path / "titles.png"
    result = json.loads(ok(run(index_dir, "export-frame", "words", "--video", library / "nested" / "titles.mp4", "-o", with_video, "--json")).stdout)
    assert Path(result["video"]) == library / "nested" / "titles.mp4"
    assert cv2.imread(str(with_video)).shape == (240, 320, 3)
    assert 0.0 <= result["time"] < 4.0


def test_export_frame_by_image_finds_that_frame(indexed: tuple[Path, subprocess.CompletedProcess], library: Path, tmp_path: Path) -> None:
    index_dir, _ = indexed
    still = tmp_path / "q.png"
    ok(run(index_dir, "export-frame", "--video", library / "shapes.mp4", "--at", "00:00:02.6", "-o", still))
    out = tmp_path / "found.png"
    result = json.loads(ok(run(index_dir, "export-frame", "--image", still, "-o", out, "--json")).stdout)
    assert Path(result["video"]) == library / "shapes.mp4"
    assert 2.0 <= result["time"] < 4.0
    assert result["score"] > 0.9


def test_export_at_time_is_frame_accurate_on_counter(index_dir: Path, tmp_path: Path) -> None:
    counter = shared("scenes", "counter.mp4")
    out = tmp_path / "f.png"
    proc = ok(run(index_dir, "export-frame", "--video", counter, "--at", "1.5", "-o", out))
    assert "00:00:01.500" in proc.stdout
    frames = []
    import av

    with av.open(str(counter)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    written = cv2.imread(str(out))
    assert np.array_equal(written, frames[15])  # frame 16 of the clip, which shows "16"
    assert not np.array_equal(written, frames[14]) and not np.array_equal(written, frames[16])


def test_indexing_twice_keeps_the_same_scenes(tmp_path: Path, sample_clips: dict[str, Path], model_args: list[str]) -> None:
    index_dir = tmp_path / "ix"
    folder = tmp_path / "clips"
    shutil.copytree(sample_clips["shapes.mp4"].parent, folder)
    ok(run(index_dir, "index", folder, *model_args))
    first = json.loads(ok(run(index_dir, "status", "--json")).stdout)
    again = json.loads(ok(run(index_dir, "index", folder, "--json")).stdout)
    assert again["added"] == 0 and again["skipped"] == len(sample_clips)
    # touched but unchanged content: nothing is re-embedded
    os.utime(folder / "shapes.mp4", (1, 1))
    touched = json.loads(ok(run(index_dir, "index", folder, "--json")).stdout)
    assert touched["added"] == touched["updated"] == 0
    # the same pictures re-encoded (new bytes): re-indexed in place, never duplicated
    make_samples.write_clip(folder / "shapes.mp4", make_samples.SAMPLES["shapes.mp4"], codec="mpeg4")
    changed = json.loads(ok(run(index_dir, "index", folder, "--json")).stdout)
    assert changed["updated"] == 1 and changed["added"] == 0
    second = json.loads(ok(run(index_dir, "status", "--json")).stdout)
    assert (second["videos"], second["scenes"]) == (first["videos"], first["scenes"])


# -- errors: one line, no traceback, a meaningful exit code ----------------------------------------
# (the usage errors of search and export-frame through the CLI app in this process: run_here)

def test_missing_path(index_dir: Path, tmp_path: Path, model_args: list[str]) -> None:
    assert_one_line_error(run(index_dir, "index", tmp_path / "nowhere", *model_args), 2, "no such file or folder")


def test_folder_without_videos(index_dir: Path, tmp_path: Path, model_args: list[str]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hi")
    assert_one_line_error(run(index_dir, "index", tmp_path / "docs", *model_args), 3, "no video files")


def test_no_index_yet(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path / "empty", "search", "dog"), 3, "cliptool index")
    assert_one_line_error(run(tmp_path / "empty", "status"), 3, "cliptool index")


def test_empty_query(indexed: tuple[Path, subprocess.CompletedProcess]) -> None:
    index_dir, _ = indexed
    assert_one_line_error(run_here(index_dir, "search", "  "), 2, "empty query")
    assert_one_line_error(run_here(index_dir, "search"), 2, "empty query")


def test_bad_image_query(indexed: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    index_dir, _ = indexed
    assert_one_line_error(run_here(index_dir, "search", "--image", tmp_path / "none.jpg"), 2, "no such image")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    assert_one_line_error(run_here(index_dir, "search", "--image", fake), 2, "not a readable image")


def test_missing_output_folder(indexed: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    index_dir, _ = indexed
    proc = run_here(index_dir, "export-frame", "circle", "-o", tmp_path / "no" / "such" / "dir" / "x.jpg")
    assert_one_line_error(proc, 2, "output folder does not exist")
    assert_one_line_error(run_here(index_dir, "export-frame", "circle", "-o", tmp_path / "x.gif"), 2, ".jpg, .jpeg or .png")


def test_bad_time_and_video_for_export(index_dir: Path, tmp_path: Path, sample_clips: dict[str, Path]) -> None:
    clip = sample_clips["shapes.mp4"]
    assert_one_line_error(run_here(index_dir, "export-frame", "--video", clip, "--at", "1:xx", "-o", tmp_path / "a.jpg"), 2, "not a time")
    assert_one_line_error(run_here(index_dir, "export-frame", "--video", tmp_path / "gone.mp4", "--at", "1", "-o", tmp_path / "a.jpg"), 2, "no such video")


def test_export_at_a_time_past_the_end_is_an_error_naming_the_length(index_dir: Path, tmp_path: Path,
                                                                      sample_clips: dict[str, Path]) -> None:
    clip = sample_clips["shapes.mp4"]
    out = tmp_path / "late.jpg"
    proc = run_here(index_dir, "export-frame", "--video", clip, "--at", "99", "-o", out)
    assert_one_line_error(proc, 2, "00:01:39.000 is past the end of the video (00:00:0")
    assert not out.exists()
    ok(run_here(index_dir, "export-frame", "--video", clip, "--at", "5.9", "-o", out))  # the last frame: still there


def test_global_options_work_on_either_side_of_the_subcommand(indexed: tuple[Path, subprocess.CompletedProcess],
                                                              tmp_path: Path) -> None:
    index_dir, _ = indexed
    elsewhere = tmp_path / "no-index-here"
    expected = json.loads(ok(run_here(index_dir, "search", "a red circle", "--json")).stdout)["results"]
    assert expected
    for args in (["search", "a red circle", "--index-dir", index_dir, "--json"],
                 ["search", "a red circle", f"--index-dir={index_dir}", "--json"],
                 ["search", "--index-dir", index_dir, "a red circle", "--json", "--text-precision", "int8"]):
        proc = run_here(elsewhere, *args)  # run_here puts --index-dir ELSEWHERE first: the later one wins
        assert proc.returncode == 0, (args, proc.stderr)
        assert [h["path"] for h in json.loads(proc.stdout)["results"]][:1] == [expected[0]["path"]]
    assert "videos:" in ok(run(elsewhere, "status", "--index-dir", index_dir)).stdout  # a fresh process too
    assert_one_line_error(run_here(elsewhere, "status", "--index-dir", index_dir, "--text-precision", "fp16"), 2,
                          "--text-precision")


def test_hoisting_moves_only_global_options_after_the_command() -> None:
    from cliptool.cli import hoist_global_options

    commands = {"search", "index"}
    assert hoist_global_options(["search", "a dog", "--index-dir", "X", "-n", "3"], commands) == \
        ["--index-dir", "X", "search", "a dog", "-n", "3"]
    assert hoist_global_options(["--index-dir", "A", "search", "q", "--text-precision=int8"], commands) == \
        ["--index-dir", "A", "--text-precision=int8", "search", "q"]
    assert hoist_global_options(["search", "--", "--index-dir", "X"], commands) == ["search", "--", "--index-dir", "X"]
    assert hoist_global_options(["--version"], commands) == ["--version"]


def test_ctrl_c_inside_an_import_counts_as_an_interrupt() -> None:
    """A dataclass defined while Ctrl-C lands raises RuntimeError from the KeyboardInterrupt."""
    from cliptool.cli import _caused_by_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__") from exc
    except RuntimeError as wrapped:
        assert _caused_by_interrupt(wrapped)
    assert not _caused_by_interrupt(RuntimeError("plain")) and not _caused_by_interrupt(None)


def test_a_missing_pretrained_file_is_named_not_a_model_mismatch(indexed: tuple[Path, subprocess.CompletedProcess],
                                                                 library: Path, tmp_path: Path) -> None:
    index_dir, _ = indexed
    missing = tmp_path / "weights" / "missing.pt"
    proc = run(index_dir, "index", library, "--pretrained", missing)
    assert_one_line_error(proc, 6, f"--pretrained: no such file: {missing}")
    assert "was built with" not in proc.stderr
    assert_one_line_error(run_here(index_dir, "keyframes", library / "shapes.mp4", "-o", tmp_path / "k",
                                   "--pretrained", missing), 6, "no such file")


def test_changed_settings_are_said_recorded_and_redone_with_reindex(tmp_path: Path, sample_clips: dict[str, Path],
                                                                    model_args: list[str]) -> None:
    """--max-scene 20, then 1 on the same unchanged files: they keep their scenes, and one line
    says so and how to redo them; --reindex redoes them; a plain run takes the index's settings."""
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(sample_clips["outdoors.mp4"], folder / "outdoors.mp4")  # a 3 s shot, then a 2 s one
    ix = tmp_path / "ix"
    ok(run_here(ix, "index", folder, "--max-scene", "20", *model_args))
    long_scenes = scene_list(ix, folder / "outdoors.mp4")
    assert max(s["end_time"] - s["start_time"] for s in long_scenes) > 2.5
    proc = ok(run_here(ix, "index", folder, "--max-scene", "1", *model_args))
    note = [line for line in proc.stderr.splitlines() if "keep the settings" in line]
    assert note == ["1 unchanged video(s) keep the settings they were indexed with (--max-scene 20 (now 1)): "
                    "`cliptool index --reindex PATH` analyses them again with this run's"], proc.stderr
    assert scene_list(ix, folder / "outdoors.mp4") == long_scenes
    summary = json.loads(ok(run_here(ix, "index", folder, "--json", *model_args)).stdout)  # the index's: 1
    assert summary["kept_settings"] == 1 and summary["skipped"] == 1
    shutil.copy(sample_clips["shapes.mp4"], folder / "shapes.mp4")  # new: analysed with the recorded --max-scene 1
    ok(run_here(ix, "index", folder, *model_args))
    assert max(s["end_time"] - s["start_time"] for s in scene_list(ix, folder / "shapes.mp4")) <= 1.0 + 1e-6
    proc = ok(run_here(ix, "index", folder, "--reindex", *model_args))
    assert "2 updated" in proc.stderr and "keep the settings" not in proc.stderr
    assert max(s["end_time"] - s["start_time"] for s in scene_list(ix, folder / "outdoors.mp4")) <= 1.0 + 1e-6
    assert "keep the settings" not in ok(run_here(ix, "index", folder, *model_args)).stderr


def test_corrupt_video_is_skipped_by_name_and_the_rest_indexed(tmp_path: Path, sample_clips: dict[str, Path], model_args: list[str]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sample_clips["titles.mp4"], folder / "good.mp4")
    (folder / "broken.mp4").write_bytes(os.urandom(5000))
    index_dir = tmp_path / "ix"
    proc = run(index_dir, "index", folder, *model_args)
    assert proc.returncode == 8, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "broken.mp4" in warnings[0]
    assert json.loads(ok(run(index_dir, "status", "--json")).stdout)["videos"] == 1


def test_only_corrupt_videos_fail_the_run(tmp_path: Path, model_args: list[str]) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.mkv").write_bytes(b"")
    proc = run(tmp_path / "ix", "index", folder, *model_args)
    assert proc.returncode == 7 and "a.mkv" in proc.stderr and "Traceback" not in proc.stderr


def test_weights_unavailable_offline_says_how_to_pass_a_file(tmp_path: Path, sample_clips: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as `run` has it; in this process, where open_clip is loaded once
    proc = run_here(tmp_path / "ix", "index", sample_clips["shapes.mp4"], "--model", "ViT-B-32", "--pretrained",
                    "laion2b_s34b_b79k")
    assert_one_line_error(proc, 6, "--pretrained")
    proc = run(tmp_path / "ix", "index", sample_clips["shapes.mp4"], "--pretrained", tmp_path / "missing.pt")
    assert_one_line_error(proc, 6, f"--pretrained: no such file: {tmp_path / 'missing.pt'}")


def test_other_model_on_existing_index_is_refused(indexed: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, sample_clips: dict[str, Path]) -> None:
    index_dir, _ = indexed
    config, ckpt = make_samples.write_tiny_model(tmp_path / "other", seed=1)
    proc = run(index_dir, "index", sample_clips["shapes.mp4"], "--model", config, "--pretrained", ckpt)
    assert_one_line_error(proc, 5, "was built with model")


def test_an_index_keeps_its_precision(tmp_path: Path, sample_clips: dict[str, Path], model_args: list[str]) -> None:
    """The bf16 runs go through the CLI in this process: bf16 runs open_clip, loaded here once
    rather than in a new process per command; the refusals below run in new processes."""
    index_dir = tmp_path / "index"
    clip = sample_clips["shapes.mp4"]
    ok(run_here(index_dir, "index", clip, *model_args, "--precision", "bf16"))
    status = json.loads(ok(run(index_dir, "status", "--json")).stdout)
    assert str(status).count("bf16") >= 1
    # The same model named again, without --precision: the index's bf16, not the new default.
    ok(run_here(index_dir, "index", sample_clips["titles.mp4"], *model_args))
    from cliptool.models.spec import ModelSpec
    from cliptool.search.searcher import Searcher

    searcher = Searcher(index_dir, ModelSpec(model_args[1], model_args[3]))
    assert searcher.spec.precision == "bf16"
    hits = searcher.search(searcher.image_vector(_first_frame(clip, tmp_path)), top=3)
    assert Path(hits[0].path).name == "shapes.mp4" and searcher.model.spec.precision == "bf16"
    assert_one_line_error(run(index_dir, "index", clip, *model_args, "--precision", "int8"), 5, "was built with model")
    assert_one_line_error(run(index_dir, "index", clip, "--precision", "fp16"), 2, "unknown precision")


def _first_frame(video: Path, tmp_path: Path) -> Path:
    from cliptool.media.decode import VideoReader, to_rgb

    with VideoReader(video) as reader:
        rgb = to_rgb(next(reader.frames()).av_frame)
    out = tmp_path / "frame.png"
    cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return out


def test_help_is_light_and_python_m_works() -> None:
    code = "import sys; from cliptool.cli import app; heavy = [m for m in ('torch', 'open_clip', 'cv2', 'av', 'faiss', 'plyvel') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    proc = subprocess.run([sys.executable, "-m", "cliptool", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for command in ("index", "search", "export-frame", "status", "scenes"):
        assert command in proc.stdout
