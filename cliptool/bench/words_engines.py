"""The speech and on-screen-text engines (`python -m cliptool.bench --speech-only` / `--screen-only`),
and both through the whole tool (`--words-pipeline-only`, part of `--words-only`: `bench_pipeline`).

Speech: 32 sentences said by Festival's HTS voice in eight clips (four each, another voice's
sentence between every two, low noise; data/talking_videos.py), transcribed with the bundled
engine (pocketsphinx, with the voice activity detector); a sentence is found when at least two
thirds of its key words (stopwords aside) are in the transcript within 1 s of when it was said.
Cost: seconds of recognition per minute of video, and the ratio to the picture index time of the
same clips (cliptool's API, the bench's random-weight ViT-B-32, default settings, no words),
with the detector on and off on speech-heavy clips (sentences back to back, 1280x720, 25 fps).

Screen text: 32 words drawn 24-60 px high (capitals) in four fonts at random places of 640x360
frames, one at a time; a word is read when tesseract's word equals it in the frames it is on.
Cost: the detector on frames without text, the detector and tesseract on frames with text (a
first reading, and a frame that repeats the one before), the share of real video frames (the
shared test clips) the detector passes on, and the ratio to the picture index time.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliptool.bench.corpus import REPO, SHARED
from cliptool.bench.measure import median
from cliptool.bench.tables import cell, print_aligned


def cpu_now() -> float:
    """CPU seconds used so far by this process and its finished children (tesseract)."""
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def talking_videos() -> Any:
    """data/talking_videos.py, loaded once by file."""
    if "talking_videos" not in sys.modules:
        spec = importlib.util.spec_from_file_location("talking_videos", REPO / "data" / "talking_videos.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["talking_videos"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["talking_videos"]


def build_speech_clips(out: Path, quick: bool) -> dict[str, Any]:
    """The accuracy clips (eight of four sentences; quick: four) and the speech-heavy clips
    (cached under out/words/ with their truth)."""
    tv = talking_videos()
    folder = out / "words"
    truth_file = folder / ("speech-quick.json" if quick else "speech.json")
    if truth_file.is_file():
        raw = json.loads(truth_file.read_text())
        return {k: [tv.Clip(Path(c["path"]), c["seconds"], [tv.Said(**s) for s in c["said"]]) for c in v]
                for k, v in raw.items()}
    cache = folder / "speech-cache"
    n = 16 if quick else 32
    talk = [tv.talking_clip(folder / f"talk-{i}.mp4", tv.SENTENCES[i * 4:i * 4 + 4], cache, seed=i,
                            width=640, height=360, fps=25) for i in range(n // 4)]
    heavy_n = 8 if quick else 16
    heavy = [tv.talking_clip(folder / f"heavy-{i}.mp4", tv.SENTENCES[i * heavy_n:(i + 1) * heavy_n], cache,
                             seed=i, dense=True, width=1280, height=720, fps=25) for i in range(2)]
    clips = {"talk": talk, "heavy": heavy}
    truth_file.write_text(json.dumps({k: [{"path": str(c.path), "seconds": c.seconds,
                                           "said": [vars(s) for s in c.said]} for c in v]
                                      for k, v in clips.items()}, indent=1))
    return clips


def found(words: list, said: Any, slack: float = 1.0) -> tuple[bool, int, int]:
    """Whether `said` was heard (2/3 of its key words within `slack` s), and key words heard / all."""
    tv = talking_videos()
    heard = {w.text.lower() for w in words if said.start - slack <= w.start <= said.end + slack}
    keys = tv.key_words(said.text)
    hits = sum(k in heard for k in keys)
    return hits * 3 >= 2 * len(keys), hits, len(keys)


def picture_index_s(paths: list[Path], ckpt: Path, work: Path, repeat: int) -> float:
    """Median wall time of indexing `paths` into a new index with cliptool's API (no words)."""
    from cliptool.api import Index

    times = []
    for _ in range(repeat):
        index_dir = work / "words-index"
        shutil.rmtree(index_dir, ignore_errors=True)
        t0, c0 = time.perf_counter(), cpu_now()
        Index(index_dir).index(paths, model="ViT-B-32", pretrained=str(ckpt), progress=False, report=lambda m: None)
        times.append(time.perf_counter() - t0)
        LAST_CPU_S[0] = cpu_now() - c0
    shutil.rmtree(work / "words-index", ignore_errors=True)
    return median(times)


LAST_CPU_S = [0.0]  # CPU seconds of the last picture index run


def bench_speech(out: Path, ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """Accuracy on the sentences; cost with the detector on (and off on speech-heavy clips)."""
    from cliptool.analysis.words.audio import RATE, read_audio
    from cliptool.analysis.words.speech import transcribe
    from cliptool.analysis.words.vad import voiced_regions

    print("bench: speech clips (Festival; cached)", file=sys.stderr)
    clips = build_speech_clips(out, quick)
    picture_index_s([clips["talk"][0].path], ckpt, work, 1)  # exports the towers once, outside the timings
    transcribe(clips["talk"][0].path)  # and loads pocketsphinx's model files into the page cache
    rows: list[dict[str, Any]] = []
    details = []
    sentences = hit_s = key_hits = key_all = 0
    for kind in ("talk", "heavy"):
        paths = [c.path for c in clips[kind]]
        minutes = sum(c.seconds for c in clips[kind]) / 60
        print(f"bench: speech on {kind} clips ({minutes * 60:.0f} s)", file=sys.stderr)
        modes = (True, False) if kind == "heavy" else (True,)
        times: dict[object, list[float]] = {"picture": [], True: [], False: []}
        cpus: dict[object, list[float]] = {"picture": [], True: [], False: []}
        words_by_clip: list[list] = []
        for _ in range(repeat):  # alternately, so that a busy spell of the machine falls on each
            times["picture"].append(picture_index_s(paths, ckpt, work, 1))
            cpus["picture"].append(LAST_CPU_S[0])
            for vad in modes:
                t0, c0 = time.perf_counter(), cpu_now()
                got = [transcribe(c.path, vad=vad) for c in clips[kind]]
                times[vad].append(time.perf_counter() - t0)
                cpus[vad].append(cpu_now() - c0)
                if vad:
                    words_by_clip = got
        picture = median(times["picture"])
        t0 = time.perf_counter()
        voiced = 0.0
        for c in clips[kind]:
            samples = read_audio(c.path)
            voiced += sum(b - a for a, b in voiced_regions(samples, RATE)) if samples is not None else 0.0
        decode_vad = time.perf_counter() - t0
        for vad in modes:
            wall = median(times[vad])
            rows.append({"clips": kind, "vad": vad, "minutes": minutes, "speech_s": wall, "s_per_min": wall / minutes,
                         "picture_index_s": picture, "ratio_to_picture": wall / picture,
                         "voiced_share": voiced / (minutes * 60) if vad else 1.0,
                         "audio_and_vad_s_per_min": decode_vad / minutes, "runs_s": times[vad],
                         "picture_runs_s": times["picture"], "cpu_s": median(cpus[vad]),
                         "picture_cpu_s": median(cpus["picture"]),
                         "cpu_ratio_to_picture": median(cpus[vad]) / median(cpus["picture"])})
        if kind == "talk":
            for c, words in zip(clips[kind], words_by_clip):
                for s in c.said:
                    if s.target:
                        ok, hits, n = found(words, s)
                        sentences += 1
                        hit_s += ok
                        key_hits += hits
                        key_all += n
                        details.append({"text": s.text, "start": s.start, "found": ok,
                                        "heard": " ".join(w.text for w in words
                                                          if s.start - 1 <= w.start <= s.end + 1)})
    return {"rows": rows, "sentences": sentences, "found": hit_s, "key_words": key_hits, "key_words_all": key_all,
            "details": details}


def bench_vad(out: Path, quick: bool) -> list[dict[str, Any]]:
    """The voice activity detectors compared on the talk clips (share of the sentences' time
    covered, share of the clip passed on) and on music (share passed on): loudness alone, loudness
    and rhythm (cliptool's), and WebRTC's (pocketsphinx's Endpointer)."""
    import io

    from cliptool.analysis.words.audio import RATE, read_audio, to_pcm16
    from cliptool.analysis.words.vad import voiced_regions

    tv = talking_videos()
    clips = build_speech_clips(out, quick)["talk"]
    quiet = np.zeros(10 * RATE, np.float32)
    noisy_music = []  # a minute each: 10 s of room noise, 20 s of music, 10 s of noise, 20 s of music
    for s in range(3):
        m = np.concatenate([quiet, tv.music(20.0, seed=2 * s), quiet, tv.music(20.0, seed=2 * s + 1)])
        noisy_music.append(m + tv.noise(len(m) / RATE + 0.1, 0.003, s)[: len(m)])

    def loud_only(x: np.ndarray) -> list[tuple[float, float]]:
        from cliptool.analysis.words import vad as v

        e = v.frame_energy(x, RATE)
        db = 10 * np.log10(e + 1e-12)
        loud = (db > np.percentile(db, 10) + v.FLOOR_DB) & (db > v.ABS_DB)
        return _frames_to_regions(loud, v.FRAME_S)

    def webrtc(mode: int):
        def run(x: np.ndarray) -> list[tuple[float, float]]:
            from pocketsphinx import Segmenter

            seg = Segmenter(vad_mode=mode, sample_rate=RATE)
            return [(s.start_time, s.end_time) for s in seg.segment(io.BytesIO(to_pcm16(x)))]
        return run

    detectors = {"loudness + rhythm (cliptool)": lambda x: voiced_regions(x, RATE), "loudness only": loud_only}
    detectors.update({f"WebRTC mode {m} (pocketsphinx)": webrtc(m) for m in (0, 3)})
    audio = [read_audio(c.path) for c in clips]
    rows = []
    for name, detect in detectors.items():
        covered = spoken = passed = total = 0.0
        t0 = time.perf_counter()
        for c, x in zip(clips, audio):
            regions = detect(x)
            for s in c.said:
                spoken += s.end - s.start
                covered += sum(max(0.0, min(b, s.end) - max(a, s.start)) for a, b in regions)
            passed += sum(b - a for a, b in regions)
            total += len(x) / RATE
        elapsed = time.perf_counter() - t0
        on_music = sum(sum(b - a for a, b in detect(m)) for m in noisy_music) / (len(noisy_music) * 60.0)
        rows.append({"detector": name, "speech_covered": covered / spoken, "talk_passed": passed / total,
                     "music_passed": on_music, "ms_per_min": 1000 * elapsed / (total / 60)})
    return rows


def _frames_to_regions(flags: np.ndarray, frame_s: float) -> list[tuple[float, float]]:
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return [(a * frame_s, b * frame_s) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def print_vad(rows: list[dict[str, Any]]) -> None:
    print("\nvoice activity detectors (talk clips; music: three minutes of synthesised music, 20 s at a time "
          "between 10 s of the same low noise)")
    table = [("detector", "sentences' time passed on", "talk clips passed on", "music minutes passed on",
              "ms / min audio")]
    for r in rows:
        table.append((r["detector"], cell(r["speech_covered"], "{:.0%}"), cell(r["talk_passed"], "{:.0%}"),
                      cell(r["music_passed"], "{:.0%}"), cell(r["ms_per_min"], "{:.0f}")))
    print_aligned(table)


def bench_screen(out: Path, ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """Words read, and what the detector and tesseract cost per frame."""
    import av

    from cliptool.analysis.words.screen import read_screen_text, text_regions

    tv = talking_videos()
    folder = out / "words"
    n = 16 if quick else 32
    clips = [tv.word_clip(folder / f"screen-{i}.mp4", tv.SCREEN_WORDS[i * 8:i * 8 + 8], seed=i)
             for i in range(n // 8)]
    read_words = 0
    frame_reads = frame_total = 0
    t_text: list[float] = []
    t_blank: list[float] = []
    in_order_s = in_order_cpu = 0.0
    n_frames = 0
    misses = []
    for clip in clips:
        with av.open(str(clip.path)) as c:
            frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        for t, rgb in frames:  # each frame alone: the detector, and tesseract's first reading
            on = next((s for s in clip.shown if s.start <= t < s.end), None)
            t0 = time.perf_counter()
            words = read_screen_text([(t, rgb)])
            (t_blank if on is None else t_text).append(time.perf_counter() - t0)
            if on is not None:
                frame_total += 1
                frame_reads += any(w.text.lower() == on.text.lower() for w in words)
        t0, c0 = time.perf_counter(), cpu_now()
        words = read_screen_text(frames)  # the clip in order: a word held on screen is read once
        in_order_s += time.perf_counter() - t0
        in_order_cpu += cpu_now() - c0
        n_frames += len(frames)
        for s in clip.shown:
            got = [w for w in words if s.start <= w.start < s.end and w.text.lower() == s.text.lower()]
            read_words += bool(got)
            if not got:
                misses.append({"text": s.text, "px": s.height_px,
                               "read": " ".join(w.text for w in words if s.start <= w.start < s.end)})
    # real video frames (no drawn text): the share the detector passes on
    passed = real = 0
    t_real: list[float] = []
    for name in ("scenes/bikes.mp4", "content/cockatoo.mp4", "content/pool_cleaning.mp4", "content/movie-hello.mp4",
                 "content/cityCC0.mpg"):
        path = SHARED / name
        if not path.is_file():
            continue
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            step = max(1, int(round(float(stream.average_rate or 25))))  # one frame a second
            for i, f in enumerate(c.decode(stream)):
                if i % step:
                    continue
                rgb = f.to_ndarray(format="rgb24")
                t0 = time.perf_counter()
                passed += bool(text_regions(rgb))
                t_real.append(time.perf_counter() - t0)
                real += 1
    picture_index_s([clips[0].path], ckpt, work, 1)  # the towers' export (first use of a cache), not timed
    picture = picture_index_s([c.path for c in clips], ckpt, work, 1)
    picture_cpu = LAST_CPU_S[0]
    seconds = sum(c.seconds for c in clips)
    return {"words": sum(len(c.shown) for c in clips), "read": read_words, "frame_reads": frame_reads,
            "frames_with_text": frame_total, "misses": misses,
            "blank_ms": 1000 * median(t_blank), "text_ms": 1000 * median(t_text),
            "in_order_ms": 1000 * in_order_s / n_frames, "frames": n_frames, "in_order_s": in_order_s,
            "real_frames": real, "real_passed": passed,
            "real_detect_ms": 1000 * median(t_real) if t_real else float("nan"),
            "seconds": seconds, "picture_index_s": picture, "in_order_cpu_s": in_order_cpu,
            "picture_cpu_s": picture_cpu}


def print_speech(r: dict[str, Any]) -> None:
    print(f"\nspeech (pocketsphinx, bundled model): {r['found']}/{r['sentences']} sentences found within 1 s "
          f"({r['found'] / max(1, r['sentences']):.0%}); key words heard {r['key_words']}/{r['key_words_all']} "
          f"({r['key_words'] / max(1, r['key_words_all']):.0%})")
    head = ("clips", "VAD", "video s", "voiced", "speech s", "s / min video", "picture index s", "x picture",
            "CPU s", "picture CPU s", "CPU x picture")
    rows = [head]
    for x in r["rows"]:
        rows.append((x["clips"], "on" if x["vad"] else "off", cell(x["minutes"] * 60, "{:.0f}"),
                     cell(x["voiced_share"], "{:.0%}"), cell(x["speech_s"]), cell(x["s_per_min"]),
                     cell(x["picture_index_s"]), cell(x["ratio_to_picture"], "{:.2f}"), cell(x.get("cpu_s")),
                     cell(x.get("picture_cpu_s")), cell(x.get("cpu_ratio_to_picture"), "{:.2f}")))
    print_aligned(rows)
    print("talk = 8 clips of 4 sentences with another voice between (640x360, 25 fps); heavy = sentences back to "
          "back (1280x720, 25 fps); picture index = cliptool's API, ViT-B-32 (random weights), default settings")
    missed = [d for d in r["details"] if not d["found"]]
    for d in missed:
        print(f"  missed at {d['start']:.1f} s: {d['text']!r} -> {d['heard']!r}")


def print_screen(r: dict[str, Any]) -> None:
    print(f"\non-screen text (tesseract): {r['read']}/{r['words']} words read ({r['read'] / max(1, r['words']):.0%}); "
          f"{r['frame_reads']}/{r['frames_with_text']} frames with a word read it")
    rows = [("frame", "ms per frame"),
            ("no text (the detector only)", cell(r["blank_ms"])),
            ("text (the detector + tesseract)", cell(r["text_ms"], "{:.0f}")),
            (f"the clips in order, 4 fps ({r['frames']} frames, words held 1 s, then 1 s without)",
             cell(r["in_order_ms"])),
            (f"real video frames, 1 a second: the detector ({r['real_passed']}/{r['real_frames']} passed on)",
             cell(r["real_detect_ms"]))]
    print_aligned(rows, left=True)
    print(f"the word clips ({r['seconds']:.0f} s, 640x360): reading every frame in order {r['in_order_s']:.1f} s "
          f"= {r['in_order_s'] / r['picture_index_s']:.2f}x their picture index time ({cell(r['picture_index_s'])} s); "
          f"CPU {r['in_order_cpu_s']:.1f} s = {r['in_order_cpu_s'] / r['picture_cpu_s']:.2f}x the picture index's "
          f"{r['picture_cpu_s']:.1f} s")
    for m in r["misses"]:
        print(f"  missed {m['text']!r} ({m['px']} px): read {m['read']!r}")


def run_words(out: Path, ckpt: Path, work: Path, repeat: int, quick: bool, speech: bool, screen: bool,
              results: dict[str, Any]) -> None:
    """The speech and/or screen figures into `results`, printed."""
    if speech:
        results["vad"] = bench_vad(out, quick)
        print_vad(results["vad"])
        results["speech"] = bench_speech(out, ckpt, work, repeat, quick)
        print_speech(results["speech"])
    if screen:
        results["screen"] = bench_screen(out, ckpt, work, repeat, quick)
        print_screen(results["screen"])


# -- through the whole pipeline: `cliptool index --words ...` and `search --said/--shows/--then` ----------
PIPELINE_CONFIGS = ("", "subtitles", "subtitles,speech", "subtitles,speech,screen")  # cost: each against ""


def build_chain_clips(folder: Path, cache: Path, n: int) -> list[dict[str, Any]]:
    """`n` clips (640x360, 25 fps) that each say a sentence, then show a word, then say another:
    truth for `--then` chains across said and shown steps."""
    tv = talking_videos()
    out = []
    for i in range(n):
        path = folder / f"chain-{i}.mp4"
        first, second = tv.SENTENCES[(2 * i + 5) % 32], tv.SENTENCES[(2 * i + 18) % 32]
        word = tv.SCREEN_WORDS[(i * 5 + 3) % 32]
        audio, said = tv.mix_speech(13.0, [(first, 1.0, True), (second, 8.0, True)], tv.noise(13.0, seed=i), cache)
        shown = tv.write_clip(path, 13.0, audio, [(word, 4.5, 6.5, 60 + 20 * i, 80 + 10 * i, 40, i)],
                              width=640, height=360, fps=25, seed=i)
        out.append({"path": path, "said": said, "shown": shown})
    return out


def _first_in(hits: list, path: Path) -> Any:
    return next((h for h in hits if Path(h.path) == path), None)


def _index_with(paths: list[Path], ckpt: Path, index_dir: Path, words: str) -> float:
    """Wall seconds of indexing `paths` into a new index with `--words words` (cliptool's API)."""
    from cliptool.api import Index
    from cliptool.config import IndexOptions

    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    Index(index_dir).index(paths, model="ViT-B-32", pretrained=str(ckpt), options=IndexOptions(words=words),
                           progress=False, report=lambda m: None)
    return time.perf_counter() - t0


def bench_pipeline(out: Path, ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """`--said` on the 32 sentences and `--shows` on the 32 drawn words after a real index run
    (`--words speech` / `--words screen`), `--then` chains across said and shown steps, and the
    index time of each words setting against the picture index alone on speech-heavy clips
    (alternate runs, medians)."""
    from cliptool.api import Index

    tv = talking_videos()
    clips = build_speech_clips(out, quick)
    folder = out / "words"
    n_words = 16 if quick else 32
    screens = [tv.word_clip(folder / f"screen-{i}.mp4", tv.SCREEN_WORDS[i * 8:i * 8 + 8], seed=i)
               for i in range(n_words // 8)]
    chains = build_chain_clips(folder, folder / "speech-cache", 4 if quick else 8)
    index_dir = work / "pipeline-index"
    result: dict[str, Any] = {}

    print("bench: --said after `index --words speech`", file=sys.stderr)
    _index_with([c.path for c in clips["talk"]], ckpt, index_dir, "speech")
    index = Index(index_dir)
    said_rows = {"all key words": [0, 0, 0], "two key words": [0, 0, 0]}  # found in its video, rank 1 overall, of
    misses = []
    for clip in clips["talk"]:
        for s in (s for s in clip.said if s.target):
            keys = tv.key_words(s.text)
            for kind, query in (("all key words", " ".join(keys)), ("two key words", " ".join(keys[:2]))):
                hits = index.search(said=query, top=50)
                mine = _first_in(hits, clip.path)
                ok = mine is not None and any(abs(float(d["start"]) - s.start) <= 1.0 for d in mine.said[:1])
                row = said_rows[kind]
                row[0] += ok
                row[1] += bool(ok and hits and hits[0] is mine)
                row[2] += 1
                if not ok and kind == "two key words":
                    misses.append({"query": query, "at": s.start,
                                   "heard": " ".join(w.text for w in index.words(clip.path, s.start - 1, s.end + 1))})
    result["said"] = {"rows": said_rows, "misses": misses}
    print(f"bench: --said {said_rows}", file=sys.stderr)

    print("bench: --shows after `index --words screen`", file=sys.stderr)
    _index_with([c.path for c in screens], ckpt, index_dir, "screen")
    index = Index(index_dir)
    shown_found = shown_top = shown_all = 0
    shown_misses = []
    for clip in screens:
        for w in clip.shown:
            hits = index.search(shows=w.text, top=50)
            mine = _first_in(hits, clip.path)
            ok = mine is not None and any(abs(float(d["start"]) - w.start) <= 1.0 for d in mine.shown[:1])
            shown_found += ok
            shown_top += bool(ok and hits[0] is mine)
            shown_all += 1
            if not ok:
                shown_misses.append({"text": w.text, "px": w.height_px, "at": w.start,
                                     "read": " ".join(x.text for x in index.words(clip.path, w.start - 1, w.end + 1))})
    result["shown"] = {"found": shown_found, "rank1": shown_top, "of": shown_all, "misses": shown_misses}
    print(f"bench: --shows {shown_found}/{shown_all} found, {shown_top} rank 1", file=sys.stderr)

    print("bench: --then across said and shown steps", file=sys.stderr)
    _index_with([c["path"] for c in chains], ckpt, index_dir, "speech,screen")
    index = Index(index_dir)
    chain_rows = {"said, then shown": [0, 0], "shown, then said": [0, 0], "wrong order (none expected)": [0, 0]}
    for c in chains:
        first, second = c["said"]
        word = c["shown"][0]
        k1, k2 = tv.key_words(first.text)[:2], tv.key_words(second.text)[:2]
        for kind, said_q, then, truth in (
                ("said, then shown", " ".join(k1), [f"shows:{word.text}"], (first.start, word.start)),
                ("shown, then said", None, [f"said:{' '.join(k2)}"], (word.start, second.start)),
                ("wrong order (none expected)", " ".join(k2), [f"shows:{word.text}"], None)):
            if said_q is None:
                hits = index.search(shows=word.text, then=then, within=4.0, top=20)
            else:
                hits = index.search(said=said_q, then=then, within=4.0, top=20)
            mine = _first_in(hits, c["path"])
            if truth is None:
                ok = mine is None
            else:
                ok = mine is not None and len(mine.chain) == 2 and all(
                    abs(float(step["start"]) - t) <= 1.0 for step, t in zip(mine.chain, truth))
            chain_rows[kind][0] += ok
            chain_rows[kind][1] += 1
    result["then"] = chain_rows
    print(f"bench: --then {chain_rows}", file=sys.stderr)

    shutil.rmtree(index_dir, ignore_errors=True)
    result["cost"] = bench_pipeline_cost(out, ckpt, work, repeat, quick)
    return result


def bench_pipeline_cost(out: Path, ckpt: Path, work: Path, repeat: int, quick: bool) -> dict[str, Any]:
    """The index time of each --words setting (PIPELINE_CONFIGS) against pictures only, on a
    speech-heavy clip (1280x720, 25 fps, sentences back to back with another voice between,
    about 40 s; quick: 20 s), alternately, medians of `repeat` runs each."""
    tv = talking_videos()
    folder = out / "words"
    n = 2 if quick else 4
    path = folder / f"cost-{n}.mp4"
    truth = path.with_suffix(".json")
    if truth.is_file():
        seconds = json.loads(truth.read_text())["seconds"]
    else:
        clip = tv.talking_clip(path, tv.SENTENCES[20:20 + n], folder / "speech-cache", seed=3, dense=True,
                               width=1280, height=720, fps=25)
        seconds = clip.seconds
        truth.write_text(json.dumps({"seconds": seconds}))
    index_dir = work / "pipeline-cost-index"
    print(f"bench: index time of each words setting on {seconds:.0f} s of speech-heavy video", file=sys.stderr)
    _index_with([path], ckpt, index_dir, "subtitles,speech,screen")  # towers exported, models in the page cache
    times: dict[str, list[float]] = {c: [] for c in PIPELINE_CONFIGS}
    for _ in range(repeat):
        for config in PIPELINE_CONFIGS:  # alternately, so that a busy spell of the machine falls on each
            times[config].append(_index_with([path], ckpt, index_dir, config))
            print(f"bench: --words {config or 'none'}: {times[config][-1]:.1f} s", file=sys.stderr)
    shutil.rmtree(index_dir, ignore_errors=True)
    base = median(times[""])
    return {"seconds": seconds, "runs": times,
            "rows": [{"words": c or "none (pictures only)", "index_s": median(times[c]),
                      "ratio": median(times[c]) / base} for c in PIPELINE_CONFIGS]}


def print_pipeline(r: dict[str, Any]) -> None:
    """The tables of bench_pipeline (or of bench_pipeline_cost alone)."""
    if "said" in r:
        print_pipeline_accuracy(r)
    c = r.get("cost", r)
    print(f"\nindex time by --words on {c['seconds']:.0f} s of speech-heavy video (1280x720, 25 fps; "
          f"alternate runs, medians of {len(c['runs'][''])})")
    rows = [("--words", "index s", "x pictures only")]
    for x in c["rows"]:
        rows.append((x["words"], cell(x["index_s"]), cell(x["ratio"], "{:.2f}")))
    print_aligned(rows, left=True)


def print_pipeline_accuracy(r: dict[str, Any]) -> None:
    """The accuracy tables of bench_pipeline."""
    print("\nwords through the pipeline (index --words ..., then search)")
    rows = [("query", "found at its time in its video", "and rank 1 of all", "sentences / words")]
    for kind, (ok, top, n) in r["said"]["rows"].items():
        rows.append((f"--said, {kind} (pocketsphinx, VAD)", f"{ok}/{n} ({ok / max(1, n):.0%})",
                     f"{top}/{n} ({top / max(1, n):.0%})", str(n)))
    s = r["shown"]
    rows.append(("--shows WORD (tesseract, 24-60 px)", f"{s['found']}/{s['of']} ({s['found'] / max(1, s['of']):.0%})",
                 f"{s['rank1']}/{s['of']} ({s['rank1'] / max(1, s['of']):.0%})", str(s["of"])))
    for kind, (ok, n) in r["then"].items():
        rows.append((f"--then: {kind}", f"{ok}/{n} ({ok / max(1, n):.0%})", "", str(n)))
    print_aligned(rows, left=True)
    for m in r["said"]["misses"]:
        print(f"  --said {m['query']!r} missed at {m['at']:.1f} s; heard {m['heard']!r}")
    for m in s["misses"]:
        print(f"  --shows {m['text']!r} ({m['px']} px) missed at {m['at']:.1f} s; read {m['read']!r}")
