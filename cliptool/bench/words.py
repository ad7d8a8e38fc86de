"""Words: subtitles found at the right time, `--then` chains found in order, what reading
subtitles adds to an index run, and the full-text engine's query latency.

    python -m cliptool.bench --words-only [--quick]

Synthetic videos (flat colours, `seconds` long, made here with PyAV) each get a sidecar .srt of
`cues` cues at random times, each cue holding a word no other cue holds. Then, in one run:

* index cost: the folder indexed into a fresh index with `--words none` and with `--words
  subtitles`, alternately, `repeat` times each (median wall time; the ratio is the cost);
* found at the right time: `--said WORD` for every cue: rank 1 is its video, starting at the cue's
  start (within 1 ms);
* chains: for pairs of cues of one video (A before B, gap g), `--said A --then said:B --within g+0.5`
  must give that chain first, in order; B then A must give no chain holding both;
* fusion (`bench_fusion`): toy-world videos (data/toy_videos.py, the toy CLIP) in which each
  shape is shown in two videos, and the same words are said in every video twice, once while
  its first shape is on screen; for each shape, "CAPTION" --said WORDS must give, first, the
  moment where that shape is seen and the words are said: picture alone, words alone,
  reciprocal rank fusion (what search uses) and CombSUM (min-max scaled scores summed);
* full text: one query (a word, a phrase, a prefix) on a cache of `fulltext_rows` rows of
  random words, with SQLite FTS5 (what cliptool uses) and, when the tantivy package is
  installed, tantivy, in the same run.

`subtitle_table(r)` returns the rows of the table (D's speech and OCR modules add rows beside them).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cliptool.bench.recall import TOY_MODEL
from cliptool.bench.tables import print_aligned

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu birthday goal cake scoreboard exit "
         "morning evening happy dear friend train station river bridge market garden").split()


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _write_video(path: Path, seconds: float, colour: tuple[int, int, int], fps: int = 10) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(int(seconds * fps)):
            shade = np.full((96, 160, 3), colour, dtype=np.uint8)
            shade[:, : (i * 4) % 160] //= 2  # a slow wipe: something to see
            for packet in stream.encode(av.VideoFrame.from_ndarray(shade, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_subtitled_videos(folder: Path, videos: int, cues: int, seconds: float, seed: int = 7
                          ) -> dict[str, list[tuple[float, float, str]]]:
    """`videos` synthetic videos with a sidecar .srt each; returns name -> its cues
    (start, end, unique word), by start."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, list[tuple[float, float, str]]] = {}
    n = 0
    for v in range(videos):
        name = f"talk{v:02d}.mp4"
        _write_video(folder / name, seconds, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        starts = sorted(rng.sample(range(int(seconds * 10) - 20), cues))
        rows = []
        for s in starts:
            start = s / 10
            rows.append((start, round(start + rng.uniform(0.4, 1.5), 3), f"w{n:05d}"))
            n += 1
        truth[name] = rows
        lines = [f"{i}\n{_stamp(a)} --> {_stamp(b)}\n{rng.choice(WORDS)} {word} {rng.choice(WORDS)}\n"
                 for i, (a, b, word) in enumerate(rows, 1)]
        (folder / f"talk{v:02d}.en.srt").write_text("\n".join(lines))
    return truth


def bench_subtitles(out: Path, model_dir: Path = TOY_MODEL, videos: int = 8, cues: int = 40, seconds: float = 60.0,
                    repeat: int = 3, pairs: int = 40) -> dict[str, Any]:
    """The subtitles table's figures (see the module docstring)."""
    import shutil

    from cliptool.api import Index
    from cliptool.config import IndexOptions
    from cliptool.index.indexer import index_paths
    from cliptool.models.spec import ModelSpec

    config, weights = model_dir / "config.json", model_dir / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        return {"skipped": f"no toy model at {model_dir}"}
    spec = ModelSpec(str(config), str(weights))
    folder = out / "words" / "videos"
    shutil.rmtree(folder, ignore_errors=True)
    truth = make_subtitled_videos(folder, videos, cues, seconds)
    walls: dict[str, list[float]] = {"none": [], "subtitles": []}
    index_dir = out / "work" / "words-index"
    warm = out / "work" / "words-warm"  # a first run exports the model's towers: not timed
    shutil.rmtree(warm, ignore_errors=True)
    index_paths([folder], warm, spec, IndexOptions(words=""), report=lambda m: None, progress=False)
    for _ in range(repeat):
        for words in ("none", "subtitles"):
            shutil.rmtree(index_dir, ignore_errors=True)
            options = IndexOptions(words="" if words == "none" else "subtitles")
            started = time.perf_counter()
            index_paths([folder], index_dir, spec, options, report=lambda m: None, progress=False)
            walls[words].append(time.perf_counter() - started)
    print("bench:   words: indexed", file=sys.stderr)
    index = Index(index_dir, text_runtime="numpy")
    found = right_time = 0
    query_ms: list[float] = []
    for name, rows in truth.items():
        for start, _, word in rows:
            started = time.perf_counter()
            hits = index.search(said=word, top=1)
            query_ms.append(1000 * (time.perf_counter() - started))
            found += bool(hits) and Path(hits[0].path).name == name
            right_time += bool(hits) and Path(hits[0].path).name == name and abs(hits[0].start - start) <= 1e-3
    rng = random.Random(11)
    chained = reversed_clean = tried = 0
    names = sorted(truth)
    for _ in range(pairs):
        name = rng.choice(names)
        rows = truth[name]
        i = rng.randrange(len(rows) - 1)
        a, b = rows[i], rows[min(len(rows) - 1, i + rng.randrange(1, 4))]
        if b[0] <= a[0]:
            continue
        tried += 1
        gap = max(0.0, b[0] - a[1])
        hits = index.search(said=a[2], then=[f"said:{b[2]}"], within=gap + 0.5, top=3)
        chained += bool(hits) and Path(hits[0].path).name == name and \
            [c["start"] for c in hits[0].chain] == [a[0], b[0]]
        back = index.search(said=b[2], then=[f"said:{a[2]}"], within=gap + 0.5 + (a[1] - a[0]) + (b[1] - b[0]), top=3)
        reversed_clean += not back
    none, subs = statistics.median(walls["none"]), statistics.median(walls["subtitles"])
    n = sum(len(rows) for rows in truth.values())
    return {"videos": videos, "cues": n, "seconds_each": seconds, "repeat": repeat,
            "index_s_without": none, "index_s_with": subs, "cost_ratio": subs / none,
            "found": found / n, "right_time": right_time / n, "said_query_ms": statistics.median(query_ms),
            "chains": tried, "chains_in_order": chained / max(tried, 1), "reversed_none": reversed_clean / max(tried, 1)}


def bench_fusion(out: Path, model_dir: Path = TOY_MODEL, count: int = 8, seed: int = 5) -> dict[str, Any]:
    """Top-1 accuracy of seen-and-said queries by each way of ranking (see the module docstring)."""
    from cliptool.bench.recall import toy_videos
    from cliptool.config import IndexOptions
    from cliptool.index.indexer import index_paths
    from cliptool.models.spec import ModelSpec
    from cliptool.search.query import Query
    from cliptool.search.searcher import Searcher
    from cliptool.search.signals import Step, fuse, signal_moments

    config, weights = model_dir / "config.json", model_dir / "weights.safetensors"
    if not (config.is_file() and weights.is_file()):
        return {"skipped": f"no toy model at {model_dir}"}
    tv = toy_videos()
    rng = random.Random(seed)
    captions = rng.sample(list(tv.toy_world.CAPTIONS), count)
    first, second = (3.0, 5.0), (17.0, 19.0)
    specs = [(f"fuse-{i:02d}.mp4", seed * 100 + i, [(captions[i], *first), (captions[(i + 1) % count], *second)])
             for i in range(count)]
    folder = out / "words" / "fusion"
    tv.build_set(folder, specs)
    for name, _, _ in specs:  # the words: while the first shape is on screen, and later with none
        (folder / name).with_suffix(".srt").write_text(
            f"1\n{_stamp(3.5)} --> {_stamp(4.5)}\nnow look at this\n\n2\n{_stamp(24.0)} --> {_stamp(25.0)}\n"
            "now look at this\n")
    index_dir = out / "work" / "words-fusion"
    import shutil

    shutil.rmtree(index_dir, ignore_errors=True)
    index_paths([folder], index_dir, ModelSpec(str(config), str(weights)), IndexOptions(), report=lambda m: None,
                progress=False)
    searcher = Searcher(index_dir)
    right = {"picture alone": 0, "words alone": 0, "rrf": 0, "rrf-listed": 0, "combsum": 0}
    for i, caption in enumerate(captions):
        target = specs[i][0]
        lists = signal_moments(searcher, Step(Query.of(caption), "now look"), 100)
        ranked = {"picture alone": lists[0], "words alone": lists[1],
                  **{how: fuse(lists, method=how) for how in ("rrf", "rrf-listed", "combsum")}}
        for how, moments in ranked.items():
            top = moments[0] if moments else None
            right[how] += top is not None and Path(top.path).name == target and top.start < first[1] and \
                top.end > first[0]
    return {"queries": count, "top1": {k: v / count for k, v in right.items()}}


def bench_fulltext(out: Path, rows: int = 100_000, repeat: int = 20, seed: int = 3) -> dict[str, Any]:
    """One query's latency on `rows` rows of 8 random words (≈ rows * 8 words), SQLite FTS5 with
    cliptool's tokenizer against tantivy (when installed), built and queried here."""
    import shutil
    import sqlite3

    from cliptool.vectors.fulltext import TOKENIZER, match_expression

    rng = random.Random(seed)
    vocabulary = WORDS + [f"{w}{k}" for w in WORDS for k in range(40)]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(8)) for _ in range(rows)]
    texts[rows // 2] = "happy birthday to you my dear friend"
    queries = {"word": "birthday", "phrase": '"happy birthday"', "prefix": "scoreb*"}
    folder = out / "work" / "fulltext"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result: dict[str, Any] = {"rows": rows, "words": rows * 8}
    db = sqlite3.connect(str(folder / "fts.sqlite"), isolation_level=None)
    started = time.perf_counter()
    db.execute(f"CREATE VIRTUAL TABLE fts USING fts5(text, tokenize='{TOKENIZER}')")
    db.execute("BEGIN")
    db.executemany("INSERT INTO fts(text) VALUES (?)", ((t,) for t in texts))
    db.execute("COMMIT")
    fts: dict[str, Any] = {"build_s": time.perf_counter() - started}
    for kind, q in queries.items():
        expression = match_expression(q)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            db.execute("SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT 100",
                       (expression,)).fetchall()
            times.append(1000 * (time.perf_counter() - started))
        fts[f"{kind}_ms"] = statistics.median(times)
    db.close()
    result["fts5"] = fts
    try:
        import tantivy
    except ImportError:
        result["tantivy"] = None
        return result
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("text", stored=True, tokenizer_name="en_stem")
    schema = builder.build()
    started = time.perf_counter()
    index = tantivy.Index(schema, path=str(folder))
    writer = index.writer()
    for t in texts:
        writer.add_document(tantivy.Document(text=t))
    writer.commit()
    index.reload()
    tv: dict[str, Any] = {"build_s": time.perf_counter() - started}
    searcher = index.searcher()
    for kind, q in queries.items():
        parsed = index.parse_query(q.replace('"', '"'), ["text"])
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            searcher.search(parsed, 100)
            times.append(1000 * (time.perf_counter() - started))
        tv[f"{kind}_ms"] = statistics.median(times)
    result["tantivy"] = tv
    return result


def subtitle_table(r: dict[str, Any]) -> list[list[str]]:
    """The subtitles rows: [what, figure] (reusable: other word sources add their own rows)."""
    if "skipped" in r:
        return [["subtitles", f"skipped ({r['skipped']})"]]
    return [
        ["cues found at the right time (rank 1, start within 1 ms)", f"{r['right_time']:.0%} of {r['cues']}"],
        ["cues found in the right video", f"{r['found']:.0%}"],
        ["--then chains found first, in order", f"{r['chains_in_order']:.0%} of {r['chains']}"],
        ["reversed chains: none found", f"{r['reversed_none']:.0%}"],
        ["index time without words (s, median)", f"{r['index_s_without']:.2f}"],
        ["index time with subtitles (s, median)", f"{r['index_s_with']:.2f}"],
        ["cost ratio with / without", f"{r['cost_ratio']:.3f}"],
        ["--said query (ms, median, in-process)", f"{r['said_query_ms']:.1f}"],
    ]


def print_words(r: dict[str, Any]) -> None:
    sub = r.get("subtitles", {})
    if "skipped" not in sub and sub:
        print(f"\nSubtitles ({sub['videos']} synthetic videos of {sub['seconds_each']:g} s, {sub['cues']} cues, "
              f"toy CLIP, {sub['repeat']} runs each)")
    else:
        print("\nSubtitles")
    print_aligned(subtitle_table(sub), left=True)
    fu = r.get("fusion")
    if fu:
        if "skipped" in fu:
            print(f"\nSeen and said: skipped ({fu['skipped']})")
        else:
            print(f"\nSeen and said ({fu['queries']} queries, toy CLIP): the moment both seen and said first")
            print_aligned([["ranking", "top 1 right"]] + [[k, f"{v:.0%}"] for k, v in fu["top1"].items()], left=True)
    ft = r.get("fulltext")
    if ft:
        print(f"\nFull-text query latency on {ft['rows']:,} rows ({ft['words']:,} words), ms (median)")
        rows = [["engine", "build (s)", "word", "phrase", "prefix"]]
        for name in ("fts5", "tantivy"):
            e = ft.get(name)
            if e is None:
                rows.append([name, "not installed", "-", "-", "-"])
                continue
            rows.append([name, f"{e['build_s']:.2f}", f"{e['word_ms']:.2f}", f"{e['phrase_ms']:.2f}",
                         f"{e['prefix_ms']:.2f}"])
        print_aligned(rows)


def bench_words(out: Path, model_dir: Path = TOY_MODEL, quick: bool = False) -> dict[str, Any]:
    return {"subtitles": bench_subtitles(out, model_dir, videos=4 if quick else 8, cues=20 if quick else 40,
                                         repeat=2 if quick else 3, pairs=20 if quick else 40),
            "fusion": bench_fusion(out, model_dir, count=8 if quick else 16),
            "fulltext": bench_fulltext(out, rows=20_000 if quick else 100_000)}
