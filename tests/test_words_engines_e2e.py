"""Speech and on-screen text through the whole tool: `cliptool index --words subtitles,speech,screen`
on clips with Festival speech and a rendered word at known times, then `--said`, `--shows`, a
picture query fused with words and a `--then` chain across said and shown steps, all through the
command line; a SIGKILL while videos are transcribed loses nothing committed."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import data_module, ok, one_line_error, run_here

from cliptool.index.check import check_index
from cliptool.store import IndexStore, generation

tv = data_module("talking_videos")
pytestmark = pytest.mark.skipif(
    not tv.festival_available() or shutil.which("tesseract") is None
    or importlib.util.find_spec("pocketsphinx") is None,
    reason="needs Festival with the us-slt-hts voice, tesseract and pocketsphinx (make install-tools)")

ALL = "subtitles,speech,screen"


def talking_word_clip(path: Path, sentences: list[tuple[str, float]], word: tuple[str, float, float],
                      seconds: float, cache: Path) -> tuple[list, list]:
    """A 320x240 clip saying `sentences` (text, start) over low noise and showing `word` (text,
    start, end) 36 px high; returns the truth (Said, Shown)."""
    audio, said = tv.mix_speech(seconds, [(s, t, True) for s, t in sentences], tv.noise(seconds), cache)
    text, start, end = word
    shown = tv.write_clip(path, seconds, audio, [(text, start, end, 40, 60, 36, 1)])
    return said, shown


@pytest.fixture(scope="module")
def talking_index(tmp_path_factory: pytest.TempPathFactory, model_args: list[str]):
    root = tmp_path_factory.mktemp("talking-e2e")
    folder = root / "videos"
    folder.mkdir()
    said, shown = talking_word_clip(folder / "talk.mp4", [(tv.SENTENCES[1], 1.0), (tv.SENTENCES[6], 5.5)],
                                    ("MUSEUM", 6.2, 8.2), 10.0, root / "cache")
    index_dir = root / "index"
    proc = ok(run_here(index_dir, "index", folder, *model_args, "--words", ALL))
    assert "warning" not in proc.stderr, proc.stderr
    return index_dir, folder, said, shown


def search(index_dir: Path, *args: object) -> list[dict]:
    proc = run_here(index_dir, "search", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["results"]


def test_said_and_shown_found_at_their_times(talking_index) -> None:
    index_dir, _, said, shown = talking_index
    window, station = said
    hit = search(index_dir, "--said", "window kitchen")[0]
    assert hit["signals"] == ["said"] and abs(hit["said"][0]["start"] - window.start) < 1.0, hit
    snippet = hit["said"][0]
    assert snippet["source"] == "speech" and snippet["language"] == "en" and snippet["marks"], snippet
    hit = search(index_dir, "--said", "train station")[0]
    assert abs(hit["said"][0]["start"] - station.start) < 1.0, hit
    [word] = shown
    hit = search(index_dir, "--shows", "museum")[0]
    got = hit["shown"][0]
    assert hit["signals"] == ["shown"] and got["text"].upper() == "MUSEUM", hit
    assert abs(got["start"] - word.start) < 1.0 and got["end"] <= word.end, got
    bx, by = got["box"][:2]  # where it was drawn
    assert abs(bx - word.box[0]) < 0.1 and abs(by - word.box[1]) < 0.1, (got["box"], word.box)
    assert search(index_dir, "--shows", "kitchen") == []  # said, not shown
    assert search(index_dir, "--said", "museum") == []  # shown, not said


def test_fused_and_chained_across_said_and_shown(talking_index) -> None:
    index_dir, _, said, shown = talking_index
    fused = search(index_dir, "a picture of a room", "--said", "train station")[0]
    assert fused["signals"] == ["picture", "said"] and abs(fused["said"][0]["start"] - said[1].start) < 1.0
    chain = search(index_dir, "--said", "window kitchen", "--then", "shows:museum", "--within", "6s")
    assert [c["signals"] for c in chain[0]["chain"]] == [["said"], ["shown"]]
    assert abs(chain[0]["start"] - said[0].start) < 1.0 and chain[0]["end"] <= shown[0].end
    assert search(index_dir, "--shows", "museum", "--then", "said:window kitchen", "--within", "6s") == []  # order


def test_reading_words_counts_as_progress_for_the_file_timeout(talking_index, tmp_path: Path,
                                                                model_args: list[str]) -> None:
    """No frame is decoded while speech is recognised and screen text read: the watchdog of
    --file-timeout hears from the engines instead, so the words are not given up on."""
    _, folder, said, _ = talking_index
    index_dir = tmp_path / "index"
    proc = ok(run_here(index_dir, "index", folder, *model_args, "--words", "speech,screen", "--file-timeout", "1"))
    assert "warning" not in proc.stderr, proc.stderr
    assert abs(search(index_dir, "--said", "window kitchen")[0]["said"][0]["start"] - said[0].start) < 1.0


def test_settings_the_engines_cannot_run_are_one_line_before_any_work(tmp_path: Path, model_args: list[str]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    tv.write_clip(folder / "mute.mp4", 1.0, None)
    index_dir = tmp_path / "index"
    one_line_error(run_here(index_dir, "index", folder, *model_args, "--words", "speech", "--language", "de"), 2,
                   "English")
    one_line_error(run_here(index_dir, "index", folder, *model_args, "--words", "screen", "--language", "xx"), 6,
                   "tesseract has no data for xx")
    assert not (index_dir / "videos").exists() or not list(IndexStore(index_dir).videos())


def test_sigkill_while_transcribing_loses_nothing(tmp_path: Path, model_args: list[str]) -> None:
    """Kill `cliptool index --words speech` after its first video is committed, while the next
    are transcribed: what was committed is whole (pictures and words), check finds nothing but
    orphans (and caches to rebuild), and the next run completes with every video's words."""
    folder = tmp_path / "videos"
    folder.mkdir()
    cache = tmp_path / "cache"
    truth = {}
    for i in range(3):
        said, _ = talking_word_clip(folder / f"talk{i}.mp4", [(tv.SENTENCES[8 + i], 0.8)], ("HELLO", 0.0, 0.0),
                                    4.5, cache)
        truth[f"talk{i}.mp4"] = said[0]
    index_dir = tmp_path / "index"
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cliptool", "index", str(folder), *model_args, "--words", "speech"]
    rng = random.Random(int(os.environ.get("CLIPTOOL_CRASH_SEED", random.randrange(1 << 30))))
    token = generation(index_dir)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and generation(index_dir) == token:  # the first commit
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.5))  # into the next video's transcription
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    report = check_index(index_dir)
    # orphans, and the search caches a kill before their sync leaves behind (rebuilt from the stores)
    assert [p.message for p in report.problems if p.kind not in ("orphan", "cache")] == []
    with IndexStore(index_dir) as store:
        kept = list(store.videos())
        assert kept and all(store.words(r) and store.scenes(r) for r in kept)  # each whole
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert check_index(index_dir).ok
    for name, said in truth.items():  # each video's sentence found by one of its key words at least
        starts = [h["said"][0]["start"] for word in tv.key_words(said.text)
                  for h in search(index_dir, "--said", word) if Path(h["path"]).name == name]
        assert starts and all(abs(t - said.start) < 1.0 for t in starts), (name, said, starts)
