"""Results handed on from the command line: the HTML contact sheet, OTIO and EDL timelines read
back with OpenTimelineIO, and --play through CLIPTOOL_PLAYER."""

from __future__ import annotations

import base64
import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED

NASTY = 'a <b> & "c\'s".mp4'
NON_UTF8 = os.fsdecode(b"caf\xe9 #1.mp4")


def run(index_dir: Path, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cliptool", *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1", **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cliptool: error: ") and needle in lines[0], err


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], model_args: list[str]):
    root = tmp_path_factory.mktemp("writers-videos")
    shutil.copy(sample_clips["shapes.mp4"], root / "shapes.mp4")
    shutil.copy(sample_clips["outdoors.mp4"], root / NASTY)
    shutil.copy(sample_clips["titles.mp4"], root / NON_UTF8)
    if (SHARED / "scenes" / "counter.mp4").is_file():
        shutil.copy(SHARED / "scenes" / "counter.mp4", root / "counter.mp4")  # 10 fps, 1920x1080
    index_dir = tmp_path_factory.mktemp("writers-index")
    ok(run(index_dir, "index", root, *model_args))
    return index_dir, root


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    return json.loads(ok(proc).stdout)["results"]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a["href"] or "")
        if tag == "img":
            self.images.append(a["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_contact_sheet_is_self_contained_escaped_and_shows_the_best_frames(library: tuple[Path, Path], tmp_path: Path) -> None:
    from cliptool.media.decode import frame_at
    from cliptool.writers.timeline import url_path

    index_dir, root = library
    sheet = tmp_path / "sheet.html"
    query = 'a <script>alert("x")</script> & more'
    hits = results(run(index_dir, "search", query, "-n", "8", "--json", "--html", sheet))
    assert len(hits) == 8
    raw = sheet.read_bytes()
    doc = raw.decode("utf-8")  # valid UTF-8 although a path is not
    assert "<script>" not in doc and "&lt;script&gt;" in doc
    assert '<b>' not in doc and "http://" not in doc and "https://" not in doc and "src=\"/" not in doc
    parser = _Links()
    parser.feed(doc)
    assert query in "".join(parser.text)
    assert len(parser.images) == len(hits) and all(s.startswith("data:image/jpeg;base64,") for s in parser.images)
    files = [h for h in parser.hrefs if "#t=" not in h]
    assert [url_path(h) for h in files] == [h["path"] for h in hits]
    assert {NASTY, NON_UTF8} <= {Path(h["path"]).name for h in hits}
    for hit, src, href in zip(hits, parser.images, [h for h in parser.hrefs if "#t=" in h]):
        assert float(href.split("#t=")[1]) == pytest.approx(hit["best_time"], abs=1e-3)
        jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        _, rgb = frame_at(Path(hit["path"]), hit["best_time"])
        assert jpeg.shape[1] == min(320, rgb.shape[1])
        expected = cv2.resize(rgb, (jpeg.shape[1], jpeg.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(cv2.cvtColor(jpeg, cv2.COLOR_BGR2RGB).astype(int) - expected).mean() < 6
        assert f"score {hit['score']:.3f}" in doc


def test_otio_and_edl_read_back_with_each_files_rate(library: tuple[Path, Path], tmp_path: Path) -> None:
    import opentimelineio as otio

    from cliptool.writers.timeline import url_path

    index_dir, root = library
    hits = results(run(index_dir, "search", "a red circle", "-n", "12", "--json", "--otio", tmp_path / "t.otio",
                       "--edl", tmp_path / "t.edl"))
    import cliptool

    rates = {v.path: v.fps for v in cliptool.Index.open(index_dir).videos()}
    timeline = otio.adapters.read_from_file(str(tmp_path / "t.otio"))
    clips = list(timeline.find_clips())
    assert len(clips) == len(hits)
    for clip, hit in zip(clips, hits):
        rate = rates[hit["path"]]
        assert clip.source_range.start_time.rate == pytest.approx(rate)
        assert clip.source_range.start_time.value == round(hit["start"] * rate)
        assert clip.source_range.duration.value == round(hit["end"] * rate) - round(hit["start"] * rate)
        assert url_path(clip.media_reference.target_url) == hit["path"]
        assert clip.metadata["cliptool"]["score"] == pytest.approx(hit["score"], abs=1e-6)
        assert clip.metadata["cliptool"]["query"] == "a red circle"
        assert clip.markers[0].marked_range.start_time.value == round(hit["best_time"] * rate)
    # the EDL: one rate (the one most hits share), reels of at most 8 characters, one per file
    edl_rate = max(set(rates.values()), key=lambda r: sum(rates[h["path"]] == r for h in hits))
    edl = otio.adapters.read_from_file(str(tmp_path / "t.edl"), adapter_name="cmx_3600", rate=edl_rate)
    events = list(edl.find_clips())
    assert len(events) == len(hits)
    reels = {}
    for event, hit in zip(events, hits):
        reel = event.metadata["cmx_3600"]["reel"]
        assert 1 <= len(reel) <= 8
        reels.setdefault(hit["path"], reel)
        assert reels[hit["path"]] == reel
        assert event.source_range.start_time.value == pytest.approx(hit["start"] * edl_rate, abs=1)
        assert event.source_range.duration.value == pytest.approx((hit["end"] - hit["start"]) * edl_rate, abs=1)
    assert len(set(reels.values())) == len(reels)
    assert "FROM CLIP:" in (tmp_path / "t.edl").read_text()


def test_reel_names_and_rates() -> None:
    from cliptool.writers.timeline import edit_rate, reel_names

    reels = reel_names(["/a/holiday-2019-part1.mp4", "/b/holiday-2019-part2.mp4", "/c/holiday 2019 part3.mov",
                        "/d/.mp4", "/e/ünïcode.mkv"])
    assert all(len(r) <= 8 for r in reels.values()) and len(set(reels.values())) == 5
    assert reels["/a/holiday-2019-part1.mp4"] == "HOLIDAY2"
    assert edit_rate(29.97002997) == pytest.approx(30000 / 1001) and edit_rate(25.0000001) == 25.0
    assert edit_rate(23.976) == pytest.approx(24000 / 1001) and edit_rate(16.1353) == pytest.approx(16.1353, abs=1e-3)


def _recorder(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "player-args.json"
    script = tmp_path / "record-player"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return script, log


def _wait_for(path: Path) -> None:
    for _ in range(100):
        if path.exists() and path.stat().st_size:
            return
        time.sleep(0.05)
    raise AssertionError(f"the player did not run: {path}")


def test_play_uses_cliptool_player_with_the_time_and_says_so(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, root = library
    script, log = _recorder(tmp_path)
    proc = ok(run(index_dir, "search", "a red circle", "-n", "3", "--json", "--play", "2",
                  env={"CLIPTOOL_PLAYER": f"{script} --start={{t}} --title 'cliptool {{timecode}}' {{path}}"}))
    hit = json.loads(proc.stdout)["results"][1]
    _wait_for(log)
    args = json.loads(log.read_text())
    assert args == [f"--start={hit['start']:.3f}", "--title", args[2], hit["path"]]  # the moment's start
    assert args[2].startswith("cliptool 00:00:")
    assert "playing #2 in record-player at" in proc.stderr.decode(errors='replace')
    # --play beyond --top still plays that hit; the table shows --top
    log.unlink()
    proc = ok(run(index_dir, "search", "a red circle", "-n", "1", "--play", "3",
                  env={"CLIPTOOL_PLAYER": str(script)}))
    _wait_for(log)
    assert len(proc.stdout.decode(errors='replace').splitlines()) == 2 and len(json.loads(log.read_text())) == 1


def test_play_errors_are_one_line(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, _ = library
    one_line_error(run(index_dir, "search", "a red circle", "--play", "1",
                       env={"CLIPTOOL_PLAYER": "no-such-player-here {path}"}), 2, "no such program")
    empty = tmp_path / "bin"
    empty.mkdir()
    one_line_error(run(index_dir, "search", "a red circle", "--play", "1", env={"PATH": str(empty)}),
                   1, "no video player found")
    one_line_error(run(index_dir, "search", "a red circle", "--play", "99", "--top", "1",
                       env={"CLIPTOOL_PLAYER": "true"}), 2, "only")


def test_output_paths_are_checked_before_searching(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, _ = library
    one_line_error(run(index_dir, "search", "x", "--html", tmp_path / "no" / "s.html"), 2, "does not exist")
    one_line_error(run(index_dir, "search", "x", "--html", tmp_path / "s.txt"), 2, ".html")
    one_line_error(run(index_dir, "search", "x", "--edl", tmp_path / "t.otio"), 2, ".edl")
    one_line_error(run(index_dir, "search", "x", "--otio", tmp_path), 2, "")


def test_a_failing_player_is_an_error_with_its_cause(library: tuple[Path, Path], tmp_path: Path) -> None:
    """xdg-open without a handler exits 3, a wrong command 1: neither is reported as playing."""
    index_dir, _ = library
    proc = run(index_dir, "search", "a red circle", "--play", "1", env={"CLIPTOOL_PLAYER": "false {path}"})
    one_line_error(proc, 1, "the player false failed (exit status 1)")
    assert "playing" not in proc.stderr.decode(errors='replace')
    script = tmp_path / "no-handler"
    script.write_text("#!/bin/sh\necho 'xdg-open: no method available for opening it' >&2\nexit 3\n")
    script.chmod(0o755)
    one_line_error(run(index_dir, "search", "a red circle", "--play", "1", env={"CLIPTOOL_PLAYER": str(script)}),
                   1, "failed (exit status 3): xdg-open: no method available for opening it")


def test_a_player_that_cannot_seek_says_so(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, _ = library
    script, log = _recorder(tmp_path)
    proc = ok(run(index_dir, "search", "a red circle", "--play", "1", env={"CLIPTOOL_PLAYER": f"{script} {{path}}"}))
    _wait_for(log)
    assert "(from the start: it takes no time)" in proc.stderr.decode(errors='replace')
