"""Queries: weighted combinations of text and image terms, filters (folder, file date, video
length, score) and neighbouring windows of one shot reported as one moment.

One index for the module, built with the real CLI and the committed toy CLIP (data/toy-clip,
which knows coloured shapes) on generated single-shot videos: four 6 s videos (a red circle, a
red square, a blue circle, a green star) under short/ and one 12 s video of a yellow star under
long/, cut into windows of at most 4 s, with file dates set before indexing."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from cliptool.errors import UsageError
from cliptool.search.filters import Filters
from cliptool.search.query import Query, QueryTerm
from cliptool.search.searcher import Searcher, sample_scores
from cliptool.vectors.base import ScenePosition

from conftest import REPO, data_module, one_line_error, run, run_here

TOY = REPO / "data" / "toy-clip"
CONFIG, WEIGHTS = TOY / "config.json", TOY / "weights.safetensors"

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="data/toy-clip is not there")

SHORT = {  # name -> (caption, file date as local time)
    "red-circle.mp4": ("a red circle", datetime(2020, 3, 15, 12, 0)),
    "red-square.mp4": ("a red square", datetime(2021, 6, 1, 12, 0)),
    "blue-circle.mp4": ("a blue circle", datetime(2022, 1, 10, 12, 0)),
    "green-star.mp4": ("a green star", datetime(2023, 5, 5, 12, 0)),
}
LONG = {"yellow-star.mp4": ("a yellow star", datetime(2024, 7, 7, 12, 0))}
ALL = {**SHORT, **LONG}


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(index dir, videos folder) of the module's index."""
    tv = data_module("toy_videos")
    root = tmp_path_factory.mktemp("queries")
    videos = root / "videos"
    seeds = iter(range(11, 100))
    tv.build_set(videos / "short", [(n, next(seeds), [(c, 0.4, 5.6)]) for n, (c, _) in SHORT.items()], seconds=6.0)
    tv.build_set(videos / "long", [(n, next(seeds), [(c, 0.2, 11.8)]) for n, (c, _) in LONG.items()], seconds=12.0)
    for name, (_, date) in ALL.items():
        path = videos / ("short" if name in SHORT else "long") / name
        os.utime(path, (date.timestamp(), date.timestamp()))
    index_dir = root / "index"  # indexed through the CLI in this process: a first use exports the int8 tower with torch
    proc = run_here(index_dir, "index", videos, "--max-scene", "4", "--model", CONFIG, "--pretrained", WEIGHTS)
    assert proc.returncode == 0, proc.stderr
    return index_dir, videos


def _search(index_dir: Path, *args: object, here: bool = False) -> dict:
    """`cliptool search ARGS --json`, in a new process (or, `here`, in this one: for the many
    filter cases, which the options, not the process start-up, tell apart)."""
    proc = (run_here if here else run)(index_dir, "search", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _names(results: list[dict]) -> list[str]:
    return [Path(r["path"]).name for r in results]


# -- terms ------------------------------------------------------------------------------------
def test_term_syntax() -> None:
    assert QueryTerm.parse("2:a dog") == QueryTerm(text="a dog", weight=2.0)
    assert QueryTerm.parse(" 0.5 : on a beach") == QueryTerm(text="on a beach", weight=0.5)
    assert QueryTerm.parse("a dog: running") == QueryTerm(text="a dog: running")
    assert QueryTerm.parse("1:3:10 to Yuma") == QueryTerm(text="3:10 to Yuma")  # text that starts with N:
    assert QueryTerm.parse("2:at night", avoid=True) == QueryTerm(text="at night", weight=-2.0)
    assert QueryTerm.parse("3:still.jpg", image=True) == QueryTerm(image="still.jpg", weight=3.0)
    for bad in ("0:a dog", "-1:a dog", "2:", "  "):
        with pytest.raises(UsageError):
            QueryTerm.parse(bad, option="--and")
    query = Query.parse("a dog", also=["2:on a beach"], avoid=["at night"], avoid_images=["0.5:x.jpg"])
    assert [(t.text, t.image, t.weight) for t in query.terms] == [
        ("a dog", None, 1.0), ("on a beach", None, 2.0), ("at night", None, -1.0), (None, "x.jpg", -0.5)]


def _still(videos: Path, name: str, t: float, out: Path) -> Path:
    from cliptool.media.decode import frame_at
    from cliptool.writers.frame import write_image

    _, rgb = frame_at(videos / "short" / name, t)
    write_image(out, rgb)
    return out


def test_query_vector_is_the_normalised_weighted_sum(toy_index: tuple[Path, Path], tmp_path: Path) -> None:
    import cliptool

    index_dir, videos = toy_index
    still = _still(videos, "blue-circle.mp4", 3.0, tmp_path / "blue.png")
    index = cliptool.Index.open(index_dir, text_runtime="numpy")  # one text runtime for every vector compared
    query = Query.parse("2:a red square", also=["a red circle"], avoid=["0.5:a green star"], avoid_images=[str(still)])
    parts = [(2.0, index.query_vector("a red square")), (1.0, index.query_vector("a red circle")),
             (-0.5, index.query_vector("a green star")), (-1.0, index.query_vector(image=still))]
    expected = sum(w * v / np.linalg.norm(v) for w, v in parts)
    expected /= np.linalg.norm(expected)
    got = index.query_vector(query)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert abs(float(np.linalg.norm(got)) - 1) < 1e-5
    # one term alone is that term's vector
    np.testing.assert_allclose(index.query_vector(Query.parse("a red circle")), index.query_vector("a red circle"),
                               atol=1e-6)
    with pytest.raises(UsageError, match="cancel out"):
        index.query_vector(Query.parse("a red circle", avoid=["a red circle"]))


def test_a_negative_term_lowers_the_scenes_like_it(toy_index: tuple[Path, Path], tmp_path: Path) -> None:
    import cliptool

    index_dir, videos = toy_index
    index = cliptool.Index.open(index_dir)

    def scores(query: Query) -> dict[str, float]:
        hits = index.search(query, top=50, merge=False)
        return {h.scene_id: h.score for h in hits}

    def blue(hits: dict[str, float]) -> list[str]:
        return [s for s in hits if s in blue_scenes]

    blue_scenes = {s.scene_id for s in index.scenes(videos / "short" / "blue-circle.mp4")[1]}
    plain = scores(Query.parse("a red circle"))
    by_words = scores(Query.parse("a red circle", avoid=["a blue circle"]))
    still = _still(videos, "blue-circle.mp4", 3.0, tmp_path / "blue.png")
    by_image = scores(Query.parse("a red circle", avoid_images=[str(still)]))
    assert len(blue(plain)) == 2
    for lowered in (by_words, by_image):
        assert all(lowered[s] < plain[s] - 0.1 for s in blue_scenes)
        rank = {s: i for i, s in enumerate(sorted(lowered, key=lambda s: -lowered[s]))}
        plain_rank = {s: i for i, s in enumerate(sorted(plain, key=lambda s: -plain[s]))}
        assert all(rank[s] > plain_rank[s] for s in blue_scenes)


def test_combinations_on_the_command_line(toy_index: tuple[Path, Path]) -> None:
    index_dir, _ = toy_index
    both = _search(index_dir, "a red square", "--and", "a red circle", "--videos")
    assert set(_names(both["results"])[:2]) == {"red-square.mp4", "red-circle.mp4"}
    assert [t["weight"] for t in both["terms"]] == [1.0, 1.0]
    # `--not "2:a red circle"` drops the red-circle video below the videos without red
    dropped = _names(_search(index_dir, "a red square", "--and", "a red circle", "--not", "2:a red circle",
                             "--videos")["results"])
    assert dropped[0] == "red-square.mp4"
    assert dropped.index("red-circle.mp4") > max(dropped.index("green-star.mp4"), dropped.index("yellow-star.mp4"))
    # --not as the only change sends the blue circle to the bottom
    plain = _names(_search(index_dir, "a red circle", "--videos")["results"])
    avoided = _names(_search(index_dir, "a red circle", "--not", "a blue circle", "--videos")["results"])
    assert plain.index("blue-circle.mp4") < len(plain) - 1 and avoided[-1] == "blue-circle.mp4"


def test_export_frame_takes_the_same_terms(toy_index: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, _ = toy_index
    out = tmp_path / "frame.jpg"
    proc = run(index_dir, "export-frame", "a red circle", "--not", "2:a red circle", "--and", "a yellow star",
               "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)["video"]).name == "yellow-star.mp4" and out.is_file()


# -- filters ----------------------------------------------------------------------------------
FILTER_CASES = [  # (options, the videos that may answer)
    (["--in", "{videos}/long"], {"yellow-star.mp4"}),
    (["--in", "{videos}/short", "--in", "{videos}/long/yellow-star.mp4"], set(ALL)),
    (["--in", "{link}"], set(SHORT)),  # a symbolic link to short/: compared by real path
    (["--since", "2022-01-01"], {"blue-circle.mp4", "green-star.mp4", "yellow-star.mp4"}),
    (["--until", "2021-06-01"], {"red-circle.mp4", "red-square.mp4"}),  # that whole day
    (["--since", "2021-01-01", "--until", "2022-01-10T11:00"], {"red-square.mp4"}),
    (["--since", "2022-01-10T11:59:00", "--until", "2023-05-05"], {"blue-circle.mp4", "green-star.mp4"}),
    (["--min-duration", "10"], {"yellow-star.mp4"}),
    (["--max-duration", "0:10"], set(SHORT)),
    (["--max-duration", "1m", "--min-duration", "5s"], set(ALL)),
    (["--min-duration", "2m"], set()),
]


@pytest.mark.parametrize("videos_flag", [False, True], ids=["moments", "videos"])
@pytest.mark.parametrize("options,allowed", FILTER_CASES, ids=[" ".join(c[0]) for c in FILTER_CASES])
def test_filters(toy_index: tuple[Path, Path], options: list[str], allowed: set[str], videos_flag: bool) -> None:
    index_dir, videos = toy_index
    link = index_dir.parent / "short-link"
    if not link.exists():
        link.symlink_to(videos / "short")
    args = [o.format(videos=videos, link=link) for o in options] + (["--videos"] if videos_flag else [])
    found = _search(index_dir, "a yellow star", "-n", "20", *args, here=True)
    names = _names(found["results"])
    assert set(names) == allowed
    if videos_flag:
        assert len(names) == len(set(names))
    assert found["filters"]


def test_min_score(toy_index: tuple[Path, Path]) -> None:
    index_dir, _ = toy_index
    everything = _search(index_dir, "a red circle", "--videos", "--no-merge", here=True)["results"]
    floor = 0.4
    assert any(r["score"] < floor for r in everything) and any(r["score"] >= floor for r in everything)
    for extra in ([], ["--videos"], ["--no-merge"]):
        kept = _search(index_dir, "a red circle", "--min-score", str(floor), *extra, here=True)["results"]
        assert kept and all(r["score"] >= floor for r in kept)
        assert set(_names(kept)) == {Path(r["path"]).name for r in everything if r["score"] >= floor}


def test_filters_in_the_api_and_in_similar(toy_index: tuple[Path, Path]) -> None:
    import cliptool

    index_dir, videos = toy_index
    index = cliptool.Index.open(index_dir)
    hits = index.search("a red circle", where=Filters.parse([videos / "long"]), top=5)
    assert hits and {Path(h.path).name for h in hits} == {"yellow-star.mp4"}
    seed = index.search("a red circle", top=1)[0]
    similar = index.similar_scene(seed.scene_id, top=10, where=Filters.parse(since="2022-01-01"))
    assert similar and {Path(h.path).name for h in similar} <= {"blue-circle.mp4", "green-star.mp4", "yellow-star.mp4"}
    proc = run(index_dir, "similar", "--scene", seed.scene_id, "--max-duration", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {Path(r["path"]).name for r in json.loads(proc.stdout)["results"]} <= set(SHORT)


BAD = [
    (["--since", "yesterday"], "--since"),
    (["--until", "2021-02-30"], "--until"),
    (["--since", "2023-01-01", "--until", "2022-01-01"], "after --until"),
    (["--min-duration", "abc"], "--min-duration"),
    (["--max-duration", "-5"], "--max-duration"),
    (["--min-duration", "2m", "--max-duration", "1m"], "longer than"),
    (["--min-score", "high"], "--min-score"),
    (["--in", "/no/such/folder"], "no such folder"),
    (["--and", "0:on a beach"], "weight"),
    (["--not", "2:"], "empty term"),
    (["--and-image", "/no/such.jpg"], "no such image"),
    (["--not", "a red circle"], "cancel out"),
]


@pytest.mark.parametrize("options,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_query_values_are_one_line_errors(toy_index: tuple[Path, Path], options: list[str], needle: str) -> None:
    index_dir, _ = toy_index
    one_line_error(run_here(index_dir, "search", "a red circle", *options), 2, needle)


# -- the moment, not the shot ------------------------------------------------------------------
def test_windows_of_one_shot_are_one_moment_no_longer_than_a_window(toy_index: tuple[Path, Path]) -> None:
    """A shape on screen through a 12 s shot cut into 4 s windows: one hit for the video, a span
    of at most a window around its best time, the shot beside it."""
    index_dir, _ = toy_index
    raw = _search(index_dir, "a yellow star", "--no-merge", "-n", "5")["results"]
    windows = [r for r in raw if Path(r["path"]).name == "yellow-star.mp4"]
    assert len(windows) == 3 and _names(raw[:3]) == ["yellow-star.mp4"] * 3
    merged = _search(index_dir, "a yellow star", "-n", "5")["results"]
    first = merged[0]
    best = max(windows, key=lambda r: r["score"])
    assert Path(first["path"]).name == "yellow-star.mp4"
    assert first["score"] == best["score"] and first["best_time"] == best["best_time"]
    assert first["start"] <= first["best_time"] <= first["end"] and first["end"] - first["start"] <= 4.0 + 1e-6
    assert (first["shot_start"], first["shot_end"]) == (0.0, max(r["end"] for r in windows))
    assert best["scene_id"] in first["scene_ids"] and set(first["scene_ids"]) <= {r["scene_id"] for r in windows}
    assert len(merged) == len(set(_names(merged))) == 5  # each single-shot video is one moment
    videos = _search(index_dir, "a yellow star", "--videos", "-n", "5")["results"]
    assert {k: videos[0][k] for k in ("start", "end", "best_time")} == {k: first[k] for k in ("start", "end", "best_time")}


class _Shot:
    """A vector backend of one video: windows with sample times and the score each sample gives
    the query [1, 0] (frame vectors [s, sqrt(1 - s^2)])."""

    def __init__(self, windows: list[tuple[float, float, bool, list[tuple[float, float]]]]) -> None:
        self.windows = windows

    def rows_of_video(self, video_id: str) -> np.ndarray:
        return np.arange(len(self.windows)) if video_id == "v" else np.zeros(0, dtype=np.int64)

    def position(self, row: int) -> ScenePosition:
        start, end, continues, samples = self.windows[row]
        return ScenePosition(row, f"v/x/{row:05d}", "v", "/v.mp4", row, start, end, [t for t, _ in samples], continues)

    def frame_vectors(self, row: int) -> np.ndarray:
        return np.array([[s, np.sqrt(1 - s * s)] for _, s in self.windows[row][3]], dtype=np.float32)


def _moments(shot: _Shot, top: int) -> list[tuple[float, float, float]]:
    searcher = Searcher.__new__(Searcher)
    searcher.vectors = shot  # type: ignore[assignment]
    query = np.array([1.0, 0.0], dtype=np.float32)
    cands = []
    for row in range(len(shot.windows)):
        scores = shot.frame_vectors(row) @ query
        best = int(np.argmax(scores))
        cands.append((float(scores[best]), shot.windows[row][3][best][0], shot.position(row)))
    return [(h.start, h.end, h.best_time) for h in searcher._merged(cands, top, query)]


def test_a_short_appearance_in_a_long_shot_is_a_short_moment_whatever_the_top() -> None:
    low = 0.3
    shot = _Shot([(0.0, 10.0, False, [(2.0, low), (5.0, low), (8.0, low)]),
                  (10.0, 20.0, True, [(12.0, low), (13.1, 0.9), (13.6, 0.88), (14.2, low), (18.0, low)]),
                  (20.0, 30.0, True, [(22.0, low), (25.0, 0.8), (28.0, low)])])
    first, second = (12.0, 14.2, 13.1), (22.0, 28.0, 25.0)  # between the samples that do not match
    assert _moments(shot, 1) == [first]
    assert _moments(shot, 2) == [first, second]  # two appearances, two moments
    # the shot's first window matches nothing, and no worse than what lies between it and the
    # star: not a moment of its own
    assert _moments(shot, 5) == _moments(shot, 50) == [first, second]
    matched = _Shot([(0.0, 10.0, False, [(2.0, 0.9), (5.0, 0.89), (8.0, 0.9)]),
                     (10.0, 20.0, True, [(12.0, 0.9), (15.0, 0.91), (18.0, 0.9)])])
    ((start, end, best),) = _moments(matched, 5)  # it matches all along: a window's length around the best time
    assert (start, end, best) == (10.0, 20.0, 15.0)


def test_videos_rank_like_a_full_scan(toy_index: tuple[Path, Path]) -> None:
    """--videos no longer scores every scene, yet ranks videos by their best frame as a scan of
    every frame of every scene does."""
    searcher = Searcher(toy_index[0])
    vectors = searcher.vectors
    for caption in ("a red circle", "a yellow star", "a green star"):
        q = searcher.text_vector(caption)
        best: dict[str, float] = {}
        for row in range(vectors.size):
            pos = vectors.position(row)
            _, scores = sample_scores(vectors.frame_vectors(row), pos.sample_times, q)  # the best view or whole frame
            best[pos.path] = max(best.get(pos.path, -2.0), float(np.max(scores)))
        expected = sorted(best, key=lambda p: -best[p])
        for top in (1, 3, 5):
            hits = searcher.search(q, top=top, by_video=True)
            assert [h.path for h in hits] == expected[:top]
            np.testing.assert_allclose([h.score for h in hits], [best[p] for p in expected[:top]], atol=1e-6)


def test_filter_mask_reaches_faiss(toy_index: tuple[Path, Path]) -> None:
    """scores(..., allowed=) and frame_candidates(..., allowed=) return only allowed rows, the
    best of them, as a scan of the allowed rows alone ranks them."""
    searcher = Searcher(toy_index[0])
    vectors = searcher.vectors
    q = searcher.text_vector("a yellow star")
    allowed = np.zeros(vectors.size, dtype=bool)
    allowed[::2] = True
    scores, rows = vectors.scores(q, 3, allowed=allowed)
    matrix = vectors.scene_matrix() @ q
    want = sorted(np.flatnonzero(allowed), key=lambda r: -matrix[r])[:3]
    assert list(rows) == want and np.allclose(scores, matrix[want], atol=1e-5)
    frame_rows = vectors.frame_candidates(q, 50, 10_000, allowed=allowed)
    assert frame_rows and all(allowed[r] for r in frame_rows)
    assert vectors.frame_candidates(q, 50, 10_000, allowed=np.zeros(vectors.size, dtype=bool)) == []
    mask = searcher.allowed_rows(Filters.parse(min_duration="10"))
    assert {vectors.position(int(r)).path.rsplit("/", 1)[1] for r in np.flatnonzero(mask)} == {"yellow-star.mp4"}


def _put(store, vid: str, folder: str, n_scenes: int, seed: int, mtime: float):  # noqa: ANN001, ANN202
    from cliptool.store import SceneRecord, SceneVectors, VideoRecord

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_scenes, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    record = VideoRecord(vid, f"/videos/{folder}/{vid}.mp4", 1, mtime, "fp", 10.0 * n_scenes, 25.0, 64, 48, 250, 0,
                         "h264", "m", 0.0, "")
    scenes = [SceneRecord(i, i * 1.0, i + 1.0, i * 25, i * 25 + 25, [i + 0.5], [i * 25 + 12]) for i in range(n_scenes)]
    return store.put_video(record, scenes, [SceneVectors(v, v[None, :]) for v in vectors])


def test_filter_mask_on_a_cache_with_later_commits_and_a_split_scan(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask covers the build's rows and the rows committed since (LiveIndex), hides removed
    videos, and gives the brute-force ranking of the allowed rows, on one scan or two halves."""
    import cliptool.vectors.faiss.segment as segment
    from cliptool.store import IndexStore
    from cliptool.vectors.faiss import LiveIndex, load_vector_index

    with IndexStore(tmp_path, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        _put(store, "aaaa", "a", 40, 1, 1000.0)
        _put(store, "bbbb", "b", 30, 2, 2000.0)
        _put(store, "dddd", "a", 20, 4, 4000.0)
    load_vector_index(tmp_path)  # the build
    with IndexStore(tmp_path) as store:
        _put(store, "cccc", "a", 10, 3, 3000.0)  # laid over the build
        store.delete_video("dddd")  # hidden in the build
    searcher = Searcher(tmp_path)
    vectors = searcher.vectors
    assert isinstance(vectors, LiveIndex)
    monkeypatch.setattr(segment, "_SPLIT_ROWS", 10)
    monkeypatch.setattr(segment, "usable_cores", lambda: 2)
    rows_total = vectors.base.size + len(vectors.overlay.positions)
    for where, want in [(Filters(under=("/videos/a",)), {"aaaa", "cccc"}), (Filters(since=1500.0), {"bbbb", "cccc"}),
                        (Filters(under=("/videos/a",), until=2500.0), {"aaaa"}), (Filters(max_duration=100.0), {"cccc"})]:
        mask = searcher.allowed_rows(where)
        assert len(mask) == rows_total
        assert {vectors.position(int(r)).video_id for r in np.flatnonzero(mask)} == want
        for seed in range(5):
            q = np.random.default_rng(100 + seed).standard_normal(16).astype(np.float32)
            q /= np.linalg.norm(q)
            full = {int(r): float(vectors.scene_vector(int(r)) @ q) for r in np.flatnonzero(mask)}
            expected = sorted(full, key=lambda r: (-full[r], r))[:7]
            scores, rows = vectors.scores(q, 7, allowed=mask)
            assert list(rows) == expected and np.allclose(scores, [full[r] for r in expected], atol=1e-5)
            assert {h.video_id for h in searcher.search(q, top=50, where=where)} == want
