"""Words: subtitles read from sidecar files and container tracks with their exact times, stored
with each video, searched with `--said` (stems, case, accents, phrases, prefixes), fused with a
picture query, chained with `--then`/`--within`; a changed sidecar re-reads only the words; the
full-text cache is checked and rebuilt; a SIGKILL while words are written loses nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cliptool.analysis.words.base import Word
from cliptool.analysis.words.subtitles import read_sidecar, read_subtitles, read_tracks, sidecars
from cliptool.index.check import check_index
from cliptool.store import IndexStore, generation
from cliptool.vectors.fulltext import fulltext_path, match_expression

from conftest import REPO, make_samples, ok, one_line_error, run_here

TOY = REPO / "data" / "toy-clip"
CONFIG, WEIGHTS = TOY / "config.json", TOY / "weights.safetensors"


def srt(*cues: tuple[float, float, str]) -> str:
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "\n".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n" for i, (a, b, text) in enumerate(cues, 1))


VTT = """WEBVTT

00:00:02.250 --> 00:00:03.000
<v Anna>Guten <i>Morgen</i>

00:01:05.000 --> 00:01:06.125
zweite Zeile
"""

ASS = """[Script Info]
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,20,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,10,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:04.50,0:00:05.75,Default,,0,0,0,,{\\i1}Bonjour{\\i0}\\Nle monde
Comment: 0,0:00:06.00,0:00:07.00,Default,,0,0,0,,not shown
"""


def mux_with_subtitles(video: Path, out: Path, cues: str, codec: str | None, language: str) -> None:
    """Copies `video`'s stream into `out` with a text subtitle track made from SRT `cues`:
    re-encoded as `codec` (mov_text for MP4), or copied as SubRip when None (Matroska)."""
    import av

    source = out.with_suffix(".tmp.srt")
    source.write_text(cues)
    with av.open(str(video)) as src, av.open(str(source)) as subs, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        sin = subs.streams.subtitles[0]
        if codec is None:
            sout = dst.add_stream_from_template(sin)
        else:
            decoder = av.codec.CodecContext.create("subrip", "r")
            decoder.open()
            sout = dst.add_stream(codec)
            sout.codec_context.subtitle_header = decoder.subtitle_header
            sout.time_base = sin.time_base
        sout.metadata["language"] = language
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
        for packet in subs.demux(sin):
            if packet.dts is None:
                continue
            if codec is not None:
                encoded = sout.codec_context.encode_subtitle(decoder.decode2(packet))
                encoded.pts, encoded.dts, encoded.duration = packet.pts, packet.dts, packet.duration
                encoded.time_base = sin.time_base
                packet = encoded
            packet.stream = sout
            dst.mux(packet)
    source.unlink()


# -- reading -----------------------------------------------------------------------------------------
def test_sidecars_with_language_suffixes_give_exact_times(tmp_path: Path) -> None:
    video = tmp_path / "holiday.mp4"
    video.write_bytes(b"")
    (tmp_path / "holiday.en.srt").write_text(srt((1.0, 2.5, "Happy <b>birthday</b>!"), (61.25, 62.0, "two\nlines")))
    (tmp_path / "holiday.de.vtt").write_text(VTT)
    (tmp_path / "holiday.fr.ass").write_text(ASS)
    (tmp_path / "holiday.srt").write_text(srt((3.0, 4.0, "no language")))
    (tmp_path / "holiday.extra.words.srt").write_text(srt((3.0, 4.0, "another video's")))  # not a language
    (tmp_path / "holidays.srt").write_text(srt((3.0, 4.0, "another video's")))
    assert [(p.name, lang) for p, lang in sidecars(video)] == [
        ("holiday.de.vtt", "de"), ("holiday.en.srt", "en"), ("holiday.fr.ass", "fr"), ("holiday.srt", "")]
    words = read_subtitles(video)
    assert [(w.start, w.end, w.text, w.language) for w in words] == [
        (1.0, 2.5, "Happy birthday!", "en"),
        (2.25, 3.0, "Guten Morgen", "de"),
        (3.0, 4.0, "no language", ""),
        (4.5, 5.75, "Bonjour le monde", "fr"),
        (61.25, 62.0, "two lines", "en"),
        (65.0, 66.125, "zweite Zeile", "de"),
    ]
    assert all(w.source == "subtitle" for w in words)
    (tmp_path / "holiday.it.srt").write_bytes(b"\x00\xff" * 10)
    with pytest.raises(ValueError):
        read_sidecar(tmp_path / "holiday.it.srt")
    notes: list[str] = []
    assert read_subtitles(video, notes.append) == words  # the others still read
    assert notes == [f"warning: subtitles {tmp_path / 'holiday.it.srt'}: not a readable subtitle file "
                     "(FormatAutodetectionError)"]
    with open(tmp_path / "holiday.it.srt", "wb") as f:  # sparse: 40 MB of nothing
        f.truncate(40 * 1024 * 1024)
    with pytest.raises(ValueError, match="too large"):
        read_sidecar(tmp_path / "holiday.it.srt")


@pytest.mark.parametrize("suffix, codec, kind", [(".mp4", "mov_text", "mov_text"), (".mkv", None, "subrip"),
                                                 (".mkv", "ass", "ass")])
def test_text_tracks_inside_the_container(tmp_path: Path, suffix: str, codec: str | None, kind: str) -> None:
    plain = tmp_path / "plain.mp4"
    make_samples.write_clip(plain, make_samples.SAMPLES["titles.mp4"])
    video = tmp_path / f"muxed{suffix}"
    mux_with_subtitles(plain, video, srt((0.5, 1.25, "Happy birthday!"), (2.5, 3.75, "Café au lait")), codec, "fra")
    import av

    with av.open(str(video)) as container:
        assert container.streams.subtitles[0].codec_context.name in (kind, "srt", "ssa")
    words = read_tracks(video)
    assert [(w.start, w.end, w.text, w.language) for w in words] == [
        (pytest.approx(0.5, abs=1e-3), pytest.approx(1.25, abs=1e-3), "Happy birthday!", "fra"),
        (pytest.approx(2.5, abs=1e-3), pytest.approx(3.75, abs=1e-3), "Café au lait", "fra"),
    ]
    assert read_tracks(plain) == []


def test_word_records_round_trip_and_refuse_nonsense() -> None:
    w = Word(1.0, 2.0, "EXIT", "screen", "en", (0.1, 0.2, 0.3, 0.05), 0.9)
    assert Word.from_json(json.loads(json.dumps(w.to_json()))) == w
    with pytest.raises(ValueError):
        Word(2.0, 1.0, "x", "subtitle")
    assert match_expression('"happy birthday" cake* to-day') == '"happy birthday" AND "cake" * AND "to" AND "day"'
    from cliptool.analysis.words.extract import ocr_languages, parse_words_option

    assert ocr_languages("en") == "eng" and ocr_languages("de,en-GB") == "deu+eng" and ocr_languages("chi_tra") == "chi_tra"
    assert [parse_words_option(v) for v in ("all", "none", "screen, subtitles")] == [
        "subtitles,speech,screen", "", "subtitles,screen"]


# -- searching ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def words_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The toy-world clips, indexed with the toy CLIP, with sidecar subtitles; and a clip with
    an embedded mov_text track."""
    if not WEIGHTS.is_file():
        pytest.skip("data/toy-clip is not there")
    folder = tmp_path_factory.mktemp("word-clips")
    shapes = {"garden-shapes.mp4": [("circle", "red", 1.0, 3.0, 0.5, 0.5), ("star", "yellow", 5.0, 7.0, 0.45, 0.5)],
              "parade.mp4": [("square", "blue", 2.0, 4.0, 0.5, 0.5)]}
    for seed, (name, events) in enumerate(shapes.items(), 1):  # 8 s each: shorter than the samples' 16 s
        make_samples.write_clip(folder / name, [(make_samples.shape_world(events, seed), 200)])
    (folder / "garden-shapes.en.srt").write_text(srt(
        (5.5, 6.5, "Happy birthday!"),
        (7.0, 7.8, "Crème brûlée au CAFÉ"),
    ))
    (folder / "parade.srt").write_text(srt(
        (1.0, 1.5, "the scoreboard is dark"),
        (2.5, 3.5, "happy birthday to you, my dear friend"),
        (3.0, 3.5, "GOAL"),
        (6.0, 6.5, "scoreboard lights up"),
        (7.0, 7.8, "a happy day; the birthday is later"),
    ))
    plain = tmp_path_factory.mktemp("plain") / "titles.mp4"
    make_samples.write_clip(plain, make_samples.SAMPLES["titles.mp4"])
    mux_with_subtitles(plain, folder / "titles.mp4", srt((2.5, 3.5, "the end of the story")), "mov_text", "eng")
    index_dir = tmp_path_factory.mktemp("word-index") / "index"
    ok(run_here(index_dir, "index", folder, "--model", CONFIG, "--pretrained", WEIGHTS))
    return index_dir, folder


def said(index_dir: Path, *args: object) -> list[dict]:
    proc = run_here(index_dir, "search", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["results"]


@pytest.mark.parametrize("words, clip, start", [
    ("BIRTHDAYS", "garden-shapes.mp4", 5.5),  # case and stem
    ("creme BRULEE cafe", "garden-shapes.mp4", 7.0),  # accents
    ("scorebo*", "parade.mp4", 1.0),  # prefix
    ("story", "titles.mp4", 2.5),  # the mov_text track inside the MP4
])
def test_said_finds_the_moment(words_index: tuple[Path, Path], words: str, clip: str, start: float) -> None:
    index_dir, _ = words_index
    hits = said(index_dir, "--said", words)
    assert hits, words
    best = next(h for h in hits if Path(h["path"]).name == clip and abs(h["start"] - start) < 1.0)
    assert best["signals"] == ["said"]
    snippet = best["said"][0]
    assert snippet["start"] == start and snippet["marks"], snippet


def test_phrases_and_all_words(words_index: tuple[Path, Path]) -> None:
    index_dir, _ = words_index
    every_word = {(Path(h["path"]).name, h["start"]) for h in said(index_dir, "--said", "happy birthday")}
    assert every_word == {("garden-shapes.mp4", 5.5), ("parade.mp4", 2.5), ("parade.mp4", 7.0)}
    phrase = {(Path(h["path"]).name, h["start"]) for h in said(index_dir, "--said", '"happy birthday"')}
    assert phrase == {("garden-shapes.mp4", 5.5), ("parade.mp4", 2.5)}
    hit = said(index_dir, "--said", '"happy birthday"', "--in", words_index[1] / "parade.mp4")[0]
    text, marks = hit["said"][0]["text"], hit["said"][0]["marks"]
    assert [text[a:b] for a, b in marks] in (["happy birthday"], ["happy", "birthday"])
    assert said(index_dir, "--said", "zebra") == []
    one_line_error(run_here(index_dir, "search", "--said", "?!"), 2, "no words")


def test_seen_and_said_fused(words_index: tuple[Path, Path]) -> None:
    """The moment that shows a blue square while "happy birthday" is said comes first, though
    words alone rank another moment first and the picture alone finds it without the words."""
    index_dir, _ = words_index
    alone = said(index_dir, "--said", "happy birthday", "--top", "1")[0]
    assert Path(alone["path"]).name == "garden-shapes.mp4"  # the short cue: the best BM25
    fused = said(index_dir, "a blue square", "--said", "happy birthday")
    first = fused[0]
    assert Path(first["path"]).name == "parade.mp4" and first["signals"] == ["picture", "said"]
    assert first["start"] <= 2.5 < first["end"] and 2.0 <= first["best_time"] < 4.0
    assert first["said"][0]["start"] == 2.5
    assert all(h["signals"] != ["picture", "said"] for h in fused[1:3]) or fused[0]["score"] >= fused[1]["score"]


def test_then_chains_in_order_within(words_index: tuple[Path, Path]) -> None:
    index_dir, _ = words_index
    chain = said(index_dir, "--said", "goal", "--then", "said:scoreboard", "--within", "3s")
    assert len(chain) == 1
    hit = chain[0]
    assert Path(hit["path"]).name == "parade.mp4"
    assert [(c["start"], c["end"]) for c in hit["chain"]] == [(3.0, 3.5), (6.0, 6.5)]  # not the scoreboard before
    assert (hit["start"], hit["end"]) == (3.0, 6.5)
    assert said(index_dir, "--said", "goal", "--then", "said:scoreboard", "--within", "2s") == []  # gap 2.5 s
    assert said(index_dir, "--said", "scoreboard lights", "--then", "said:goal", "--within", "1m") == []  # order
    # a picture, then words: the red circle (1-3 s), then "happy birthday" at 5.5 s
    mixed = said(index_dir, "a red circle", "--then", "said:happy birthday", "--within", "5s")
    top = mixed[0]
    assert Path(top["path"]).name == "garden-shapes.mp4"
    assert top["chain"][0]["signals"] == ["picture"] and 1.0 <= top["chain"][0]["best_time"] < 3.0
    assert top["chain"][1]["start"] == 5.5 and top["end"] == 6.5
    one_line_error(run_here(index_dir, "search", "--said", "goal", "--within", "3s"), 2, "--within needs --then")
    one_line_error(run_here(index_dir, "search", "--said", "goal", "--then", "said:", ), 2, "no words")


def test_words_in_the_python_api(words_index: tuple[Path, Path]) -> None:
    from cliptool import Index

    index_dir, folder = words_index
    index = Index(index_dir)
    hits = index.search(said="birthday", then=["said:creme"], within=5.0)
    assert [(h.start, h.end) for h in hits] == [(5.5, 7.8)]
    assert [d["start"] for d in hits[0].said] == [5.5, 7.0]
    words = index.words(folder / "parade.mp4", 2.0, 4.0)
    assert [(w.start, w.text) for w in words] == [(2.5, "happy birthday to you, my dear friend"), (3.0, "GOAL")]


# -- changes, check, crashes -----------------------------------------------------------------------
@pytest.fixture
def small_index(tmp_path: Path, model_args: list[str]) -> tuple[Path, Path]:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("shapes.mp4", "titles.mp4"):
        make_samples.write_clip(folder / name, make_samples.SAMPLES[name])
    (folder / "shapes.en.srt").write_text(srt((1.0, 2.0, "a red circle appears")))
    index_dir = tmp_path / "index"
    ok(run_here(index_dir, "index", folder, *model_args))
    return index_dir, folder


def _stored(index_dir: Path) -> dict[str, tuple[str, list[bytes], str, str]]:
    with IndexStore(index_dir) as store:
        return {v.path: (v.version, [raw for _, raw in store.vector_records(v)], v.words, v.words_key)
                for v in store.videos()}


def test_a_changed_sidecar_rereads_only_the_words(small_index: tuple[Path, Path], model_args: list[str]) -> None:
    index_dir, folder = small_index
    before = _stored(index_dir)
    shapes = str(folder / "shapes.mp4")
    (folder / "shapes.en.srt").write_text(srt((1.5, 2.5, "a blue circle leaves")))
    (folder / "titles.de.srt").write_text(srt((0.5, 1.0, "Hallo Welt")))  # a new sidecar
    proc = ok(run_here(index_dir, "index", folder, *model_args, "--json"))
    summary = json.loads(proc.stdout)
    assert (summary["added"], summary["updated"], summary["words"]) == (0, 0, 2)
    after = _stored(index_dir)
    for path in before:
        assert after[path][:2] == before[path][:2]  # the same scene version and vectors
        assert after[path][2:] != before[path][2:]  # new words
    hits = said(index_dir, "--said", "blue")
    assert [(h["path"], h["start"]) for h in hits] == [(shapes, 1.5)]
    assert said(index_dir, "--said", "red") == []
    assert [h["start"] for h in said(index_dir, "--said", "welt")] == [0.5]
    from cliptool import Index

    assert Index(index_dir).status()["words"] == {"videos": 2, "cache": "current"}
    summary = json.loads(ok(run_here(index_dir, "index", folder, *model_args, "--json")).stdout)
    assert summary["words"] == 0 and summary["skipped"] == 2  # nothing changed: nothing read
    (folder / "shapes.en.srt").unlink()
    summary = json.loads(ok(run_here(index_dir, "index", folder, *model_args, "--words", "none", "--json")).stdout)
    assert summary["words"] == 2 and said(index_dir, "--said", "blue") == []
    assert _stored(index_dir)[shapes][:2] == before[shapes][:2]
    assert check_index(index_dir).ok
    one_line_error(run_here(index_dir, "index", folder, "--words", "smell"), 2, "unknown source")
    one_line_error(run_here(index_dir, "index", folder, "--speech-engine", "parrot"), 2, "unknown speech engine")
    import importlib.util

    if importlib.util.find_spec("cliptool.analysis.words.speech") is None:  # the engine is not on this branch
        kept = _stored(index_dir)
        one_line_error(run_here(index_dir, "index", folder, *model_args, "--words", "subtitles,speech"), 6,
                       "speech recognition is not available")
        assert _stored(index_dir) == kept
        summary = json.loads(ok(run_here(index_dir, "index", folder, *model_args, "--json")).stdout)
        assert summary["words"] == 0  # the refused settings were not recorded


def test_check_finds_a_missing_or_damaged_fulltext_cache(small_index: tuple[Path, Path]) -> None:
    index_dir, _ = small_index
    path = fulltext_path(index_dir)
    assert path.is_file() and check_index(index_dir).ok
    path.unlink()
    report = check_index(index_dir)
    assert [p.message for p in report.problems] == ["the full-text cache is missing"]
    assert check_index(index_dir, repair=True).ok and path.is_file() and check_index(index_dir).ok
    with sqlite3.connect(path) as db:  # rows lost behind FTS5's back
        db.execute("DELETE FROM cues")
    assert not check_index(index_dir).ok
    assert check_index(index_dir, repair=True).ok
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)  # the file itself damaged
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    assert any("damaged" in p.message for p in check_index(index_dir).problems)
    proc = run_here(index_dir, "check", "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [h["start"] for h in said(index_dir, "--said", "circle")] == [1.0]
    path.write_bytes(b"not a database at all")  # a search rebuilds it too
    assert [h["start"] for h in said(index_dir, "--said", "circle")] == [1.0]


def test_sigkill_while_words_are_written_loses_nothing(tmp_path: Path, model_args: list[str]) -> None:
    """Kill `cliptool index` at random moments while it re-reads changed sidecars: every video
    keeps its old words or has its new ones whole, check finds nothing but orphans, and the next
    run completes."""
    folder = tmp_path / "videos"
    folder.mkdir()
    clip = tmp_path / "clip.mp4"
    make_samples.write_clip(clip, make_samples.SAMPLES["titles.mp4"])
    names = [f"clip{i}" for i in range(4)]
    for name in names:
        shutil.copy2(clip, folder / f"{name}.mp4")

    def cues(name: str, word: str) -> str:  # thousands of cues: reading them takes a while
        return srt(*((i * 0.5, i * 0.5 + 0.4, f"{word} {name} line {i}") for i in range(1500)))

    for name in names:
        (folder / f"{name}.srt").write_text(cues(name, "old"))
    index_dir = tmp_path / "index"
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cliptool", "index", str(folder), *model_args]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    for name in names:
        (folder / f"{name}.srt").write_text(cues(name, "new"))
    rng = random.Random(int(os.environ.get("CLIPTOOL_CRASH_SEED", random.randrange(1 << 30))))
    for _ in range(3):
        token = generation(index_dir)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and generation(index_dir) == token:  # a commit of words begins
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))  # inside it, or on the way to the next
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        report = check_index(index_dir)
        assert [p.message for p in report.problems if p.kind != "orphan"] == []
        with IndexStore(index_dir) as store:
            for record in store.videos():
                texts = {w[2].split()[0] for w in store.words(record)}
                assert len(store.words(record)) == 1500 and len(texts) == 1  # wholly old or wholly new
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with IndexStore(index_dir) as store:
        assert all({w[2].split()[0] for w in store.words(r)} == {"new"} for r in store.videos())
    assert check_index(index_dir).ok
    assert said(index_dir, "--said", '"new clip3 line 1499"')[0]["start"] == 749.5
    assert said(index_dir, "--said", "old") == []


# -- the web app and the contact sheet -------------------------------------------------------------
@pytest.fixture(scope="module")
def word_site(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]):
    import cliptool
    from test_serve import Server

    folder = tmp_path_factory.mktemp("word-site")
    make_samples.write_clip(folder / "shapes.webm", make_samples.SAMPLES["shapes.mp4"], codec="libvpx-vp9")
    (folder / "shapes.en.srt").write_text(srt((0.5, 1.5, "Happy birthday, <i>dear</i> friend"),
                                              (2.5, 3.5, "the cake is a lie")))
    index_dir = tmp_path_factory.mktemp("word-site-index")
    config, ckpt = tiny_model
    cliptool.Index.open(index_dir).index([folder], model=str(config), pretrained=str(ckpt), progress=False,
                                         report=lambda m: None)
    server = Server(index_dir)
    yield server, folder, index_dir
    server.stop()


def test_words_over_http_and_in_the_contact_sheet(word_site, tmp_path: Path) -> None:
    server, folder, index_dir = word_site
    with server.client() as client:
        answer = client.get("/api/search", params={"said": "birthdays"})
        assert answer.status_code == 200, answer.text
        hit = answer.json()["results"][0]
        assert hit["signals"] == ["said"] and hit["start"] == 0.5 and hit["thumbnail"]
        assert hit["said"] == [{"start": 0.5, "end": 1.5, "text": "Happy birthday, dear friend", "source": "subtitle",
                                "language": "en", "marks": [[6, 14]]}]
        chain = client.get("/api/search", params=[("said", "birthday"), ("then", "said:cake"), ("within", "2s")])
        assert [c["start"] for c in chain.json()["results"][0]["chain"]] == [0.5, 2.5]
        words = client.get("/api/words", params={"video": hit["video_id"]}).json()["words"]
        assert [(w["start"], w["text"]) for w in words] == [(0.5, "Happy birthday, dear friend"),
                                                            (2.5, "the cake is a lie")]
        for params, status in (({"said": "?!"}, 400), ({"video": "nope"}, 404), ({}, 400)):
            url = "/api/words" if "video" in params else "/api/search"
            bad = client.get(url, params=params)
            assert bad.status_code == status and "\n" not in bad.json()["error"], bad.text
    sheet = tmp_path / "sheet.html"
    proc = run_here(index_dir, "search", "--said", "cake", "--html", sheet)
    assert proc.returncode == 0, proc.stderr
    page = sheet.read_text()
    assert "the <mark>cake</mark> is a lie" in page and "said: cake" in page



def test_words_on_cards_and_a_transcript_that_seeks(word_site, driver) -> None:
    """In a real browser: the card of a --said hit shows the matched word marked; the player's
    transcript lists the video's lines, and a click on one seeks the video there."""
    from selenium.webdriver.common.by import By

    from test_browser import wait

    server, _, _ = word_site
    driver.get(server.url + "/?said=birthday")
    wait(driver, "return document.querySelectorAll('#results .card').length > 0")
    marks = driver.execute_script(
        "return [...document.querySelectorAll('#results .card .words mark')].map(m => m.textContent)")
    assert marks == ["birthday"]
    assert driver.find_element(By.ID, "said").get_attribute("value") == "birthday"
    driver.find_element(By.CSS_SELECTOR, "#results .card").click()
    wait(driver, "return document.querySelectorAll('#transcript li').length === 2")
    lines = driver.find_elements(By.CSS_SELECTOR, "#transcript li")
    assert "the cake is a lie" in lines[1].text
    lines[1].click()
    t = wait(driver, "const v = document.getElementById('video');"
                     "return v.readyState >= 1 && v.currentTime >= 2.45 && v.currentTime")
    assert 2.45 <= t <= 4.0


def test_check_names_a_video_whose_stored_words_are_damaged(small_index: tuple[Path, Path]) -> None:
    """Words damaged behind the store's back (valid LevelDB, nonsense inside): check names the
    video, a search says so in one line instead of a traceback, and --repair leaves a clean index."""
    import plyvel

    index_dir, folder = small_index
    with IndexStore(index_dir) as store:
        shapes = next(v for v in store.videos() if v.words)
    db = plyvel.DB(str(index_dir / "scenes.ldb"))
    try:
        keys = [k for k, _ in db.iterator(prefix=b"w/")]  # the words lists (store.py's key format)
        assert len(keys) == 1
        db.put(keys[0], b"[\xc5 not json", sync=True)
    finally:
        db.close()
    fulltext_path(index_dir).unlink()  # so that a search must read the stored words again
    report = check_index(index_dir)
    assert [p.message for p in report.problems if "words" in p.message] == \
        [f"{shapes.path}: its words fail their checksum or are malformed"]
    proc = run_here(index_dir, "search", "--said", "circle")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "malformed" in proc.stderr, proc.stderr
    assert run_here(index_dir, "check", "--repair").returncode == 0


def test_screen_words_merge_across_consecutive_frames_and_frames_come_at_their_times(tmp_path: Path) -> None:
    from cliptool.analysis.words.extract import frames_at, merge_screen_words

    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    seen = [Word(t, t, text, "screen", box=(0.1, 0.1, 0.2, 0.1)) for t, text in
            [(0.0, "EXIT"), (1.0, "Exit"), (2.0, "EXIT"), (4.0, "EXIT"), (1.0, "SALE"), (3.0, "SALE")]]
    merged = [(w.start, w.end, w.text) for w in merge_screen_words(seen, times)]
    # EXIT on frames 0-2 is one span; back on frame 4 after a frame without it: another; SALE
    # twice with a frame between: two
    assert merged == [(0.0, 2.0, "EXIT"), (1.0, 1.0, "SALE"), (3.0, 3.0, "SALE"), (4.0, 4.0, "EXIT")]
    clip = tmp_path / "titles.mp4"
    make_samples.write_clip(clip, make_samples.SAMPLES["titles.mp4"])  # 25 fps: white on black, then black on white
    got = list(frames_at(clip, [3.0, 0.5, 0.52]))
    assert [t for t, _ in got] == [0.5, 0.52, 3.0]
    assert all(frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 for _, frame in got)
    assert got[0][1].mean() < 128 < got[2][1].mean()  # the first title is mostly black, the second white
    from cliptool.analysis.words.extract import screen_times

    # a long scene's few samples, and one frame a second to the video's end: text between is seen
    assert screen_times([0.6, 7.0], 9.5) == [0.5, 0.6, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.0, 7.5, 8.5]
    assert screen_times([], None) == [] and screen_times([2.0]) == [0.5, 1.5, 2.0]


def test_speech_runs_and_screen_lines(tmp_path: Path, model_args: list[str]) -> None:
    """Spoken words (one record each) are kept as they are in the store and gathered into runs
    in the full-text cache, so a phrase spoken across words is found; a pause breaks a run.
    Screen words of one time are a line that --shows finds (and --said does not)."""
    from cliptool.vectors.fulltext import search_words

    folder = tmp_path / "videos"
    folder.mkdir()
    make_samples.write_clip(folder / "talk.mp4", make_samples.SAMPLES["titles.mp4"])
    index_dir = tmp_path / "index"
    ok(run_here(index_dir, "index", folder, *model_args, "--words", "none"))
    spoken = [Word(0.2, 0.5, "happy", "speech", "en"), Word(0.55, 0.9, "birthday", "speech", "en"),
              Word(2.5, 2.8, "dear", "speech", "en"), Word(2.85, 3.1, "friend", "speech", "en")]
    for at, sentence in ((10.0, "we watched a movie about the ocean"), (20.0, "we liked a movie about the irish"),
                         (30.0, "a movie about the ocean we watched")):  # runs of speech apart from each other
        spoken += [Word(at + 0.3 * i, at + 0.3 * i + 0.25, w, "speech", "en") for i, w in enumerate(sentence.split())]
    shown = [Word(1.0, 3.0, "EMERGENCY", "screen", "en", (0.1, 0.1, 0.3, 0.1), 0.9),
             Word(1.0, 3.0, "EXIT", "screen", "en", (0.45, 0.1, 0.2, 0.1), 0.8)]
    from cliptool.vectors.fulltext import fulltext_state, sync_fulltext

    before = generation(index_dir)
    assert fulltext_state(index_dir) == "current"
    with IndexStore(index_dir) as store:
        record = next(store.videos())
        store.put_words(record.video_id, [w.to_json() for w in spoken + shown], "{}")
    assert fulltext_state(index_dir) == "stale"
    assert sync_fulltext(index_dir, video_ids=[record.video_id], since=before) == 1  # that video alone
    assert fulltext_state(index_dir) == "current" and sync_fulltext(index_dir) == 0
    hits = search_words(index_dir, '"happy birthday"', ("speech",))
    assert [(h.start, h.end, h.text) for h in hits] == [(0.2, 0.9, "happy birthday")]
    assert search_words(index_dir, '"birthday dear"', ("speech",)) == []  # 1.6 s of silence between
    # a long query holds in part where a recogniser misheard a word: whole matches first, then those
    # that hold most of its words (two thirds, rounded up), each naming the words it lacks
    hits = search_words(index_dir, "we watched a movie about the ocean", ("speech",), share=2 / 3)
    assert [h.start for h in hits[:2]] in ([10.0, 30.0], [30.0, 10.0]) and [h.missing for h in hits[:2]] == [[], []]
    assert [(h.start, h.missing) for h in hits[2:]] == [(20.0, ["watched", "ocean"])]
    assert all(7 <= h.score < 8 for h in hits[:2]) and 5 <= hits[2].score < 6  # words held, plus BM25 in 0..1
    assert [h.start for h in search_words(index_dir, "we watched a movie about the ocean", ("speech",))] in (
        [10.0, 30.0], [30.0, 10.0])  # share 1: every word
    assert search_words(index_dir, "happy zebra", ("speech",), share=2 / 3) == []  # two words: both needed
    partial = said(index_dir, "--said", '"movie about" ocean watched zebra')  # the phrase, and 2 of 3 words
    assert sorted(h["start"] for h in partial) == [10.0, 30.0] and partial[0]["said"][0]["missing"] == ["zebra"]
    assert check_index(index_dir).ok
    # --shows: the words seen at one time are one line; --said does not see them, nor --shows speech
    hit = said(index_dir, "--shows", "exit")[0]
    assert (hit["start"], hit["end"], hit["signals"]) == (1.0, 3.0, ["shown"])
    assert hit["shown"][0]["text"] == "EMERGENCY EXIT" and hit["shown"][0]["marks"] == [[10, 14]]
    assert said(index_dir, "--said", "exit") == [] and said(index_dir, "--shows", "birthday") == []
    chain = said(index_dir, "--said", "happy", "--then", "shows:emergency", "--then", "said:friend")
    assert [c["signals"] for c in chain[0]["chain"]] == [["said"], ["shown"], ["said"]]


def test_watch_rereads_the_words_when_a_subtitle_file_arrives(tmp_path: Path, model_args: list[str]) -> None:
    from test_watch import INTERRUPTED, Watch

    videos, index_dir = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    make_samples.write_clip(videos / "clip.mp4", make_samples.SAMPLES["titles.mp4"])
    watch = Watch(index_dir, "watch", str(videos), *model_args, "--settle", "0.5")
    try:
        watch.wait_for(r"^watching ")
        before = _stored(index_dir)[str(videos / "clip.mp4")]
        (videos / "clip.en.srt").write_text(srt((1.0, 2.0, "subtitles arrive later")))
        deadline = time.monotonic() + 60
        while _stored(index_dir)[str(videos / "clip.mp4")][2] == before[2]:
            assert time.monotonic() < deadline and watch.proc.poll() is None, watch.err
            time.sleep(0.1)
        after = _stored(index_dir)[str(videos / "clip.mp4")]
        assert after[:2] == before[:2]  # the pictures untouched
        assert [h["start"] for h in said(index_dir, "--said", "arrive")] == [1.0]
    finally:
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(timeout=60) in INTERRUPTED
